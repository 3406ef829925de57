#!/usr/bin/env bash
# Install what the real STAC API server of the integration tests needs (tests/infra/stacapi.py):
#
#   * PostgreSQL 15 with PostGIS 3, from Debian (postgresql-15, postgresql-15-postgis-3), installed
#     with apt-get only when missing (needs root then; `apt-get update` runs first);
#   * a user other than root to own the throwaway clusters when the tests run as root (PostgreSQL
#     refuses to run as root): `postgres`, which the Debian package creates, else created here;
#   * the server's own virtual environment (stac-fastapi-pgstac + pypgstac, every package pinned in
#     requirements.txt beside this script), apart from the project's venv:
#
#       ${EARTHOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/earthops}/stacapi-venv-<sha256(requirements.txt):16>
#
# Idempotent: anything already complete is skipped (a cached run takes well under a second). The venv
# is built in a temporary folder beside its destination and renamed into place with a marker inside,
# under a lock, so a killed build never leaves a half venv that looks complete. Because it was renamed,
# its console scripts (bin/uvicorn, bin/pypgstac) carry a stale shebang: always run it as
# `<venv>/bin/python -m ...` (tests/infra/stacapi.py does).
#
#   setup.sh               install what is missing
#   setup.sh --check       exit 0 when everything is in place, 1 (saying what is missing) otherwise
#   setup.sh --print-venv  print the venv path and exit
#
# Overrides: EARTHOPS_STACAPI_PYTHON (interpreter for the venv, default python3, >= 3.11),
# EARTHOPS_STACAPI_PG_BIN (a PostgreSQL 15+ bin folder with PostGIS installed elsewhere: apt is then
# never used), EARTHOPS_STACAPI_VENV (use this venv as is; must already hold the packages).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
requirements="$here/requirements.txt"
cache="${EARTHOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/earthops}"
req_hash="$(sha256sum "$requirements" | cut -c1-16)"
venv="${EARTHOPS_STACAPI_VENV:-$cache/stacapi-venv-$req_hash}"
marker_name=".earthops-stacapi-venv"
python="${EARTHOPS_STACAPI_PYTHON:-python3}"
pg_major=15
pg_bin="${EARTHOPS_STACAPI_PG_BIN:-/usr/lib/postgresql/$pg_major/bin}"
apt_packages=(postgresql-$pg_major postgresql-$pg_major-postgis-3)
pg_os_user=postgres

log() { echo "stacapi/setup.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# apt-get's and pip's output go to this log, not the terminal (its end is shown when a step fails)
setup_log="$cache/stacapi-setup.log"
# shellcheck source=../../scripts/quietly.sh
source "$here/../../scripts/quietly.sh"
QUIETLY_PREFIX="stacapi/setup.sh: "

mode="${1:-install}"
case "$mode" in
  --print-venv) echo "$venv"; exit 0 ;;
  --check|install) ;;
  *) echo "usage: $0 [--check|--print-venv]" >&2; exit 2 ;;
esac

# --- PostgreSQL + PostGIS --------------------------------------------------------------------------
pg_sharedir() { "$pg_bin/pg_config" --sharedir 2>/dev/null; }
pg_complete() {
  local b share
  for b in postgres initdb pg_isready pg_config; do [[ -x "$pg_bin/$b" ]] || return 1; done
  share="$(pg_sharedir)" || return 1
  [[ -f "$share/extension/postgis.control" ]]
}
user_complete() { [[ $EUID -ne 0 ]] || id -u "$pg_os_user" >/dev/null 2>&1; }

find_modules='import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ("stac_fastapi.pgstac.app", "pypgstac.load", "uvicorn")))'
venv_complete() {
  if [[ -z "${EARTHOPS_STACAPI_VENV:-}" ]]; then  # ours: the marker says it was built from these pins
    [[ -f "$venv/$marker_name" ]] || return 1
    [[ "$(cat "$venv/$marker_name")" == "$req_hash" ]] || return 1
  fi
  # find_spec, not import: the app's import alone takes about a second
  "$venv/bin/python" -c "$find_modules" >/dev/null 2>&1
}

if [[ "$mode" == --check ]]; then
  ok=0
  pg_complete || { log "missing: PostgreSQL $pg_major with PostGIS 3 in $pg_bin"; ok=1; }
  user_complete || { log "missing: a non-root user '$pg_os_user' to run PostgreSQL"; ok=1; }
  venv_complete || { log "missing: the server venv $venv"; ok=1; }
  [[ $ok -eq 0 ]] && log "complete: $pg_bin, $venv"
  exit $ok
fi

start=$SECONDS
if pg_complete; then
  log "PostgreSQL $pg_major with PostGIS found in $pg_bin"
elif [[ -n "${EARTHOPS_STACAPI_PG_BIN:-}" ]]; then
  die "EARTHOPS_STACAPI_PG_BIN=$pg_bin lacks postgres/initdb/pg_isready/pg_config or PostGIS (extension/postgis.control)"
else
  [[ $EUID -eq 0 ]] || die "PostgreSQL $pg_major with PostGIS 3 is not installed; as root run: apt-get install ${apt_packages[*]} (or run this script as root)"
  command -v apt-get >/dev/null || die "PostgreSQL $pg_major with PostGIS 3 is not installed and there is no apt-get; install them and set EARTHOPS_STACAPI_PG_BIN"
  export DEBIAN_FRONTEND=noninteractive
  apt_install() { apt-get update -q && apt-get install -y -q --no-install-recommends "${apt_packages[@]}"; }
  quietly "$setup_log" "installing ${apt_packages[*]} with apt-get, for the STAC API test server" \
    "1-3 min" -- apt_install || die "apt-get could not install ${apt_packages[*]} (its output: $setup_log)"
  pg_complete || die "apt-get installed ${apt_packages[*]} but $pg_bin still lacks PostgreSQL or PostGIS"
  log "PostgreSQL and PostGIS installed in $((SECONDS - start)) s"
fi

if ! user_complete; then
  log "creating the system user '$pg_os_user' (PostgreSQL does not run as root)"
  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
    "$pg_os_user" || id -u "$pg_os_user" >/dev/null 2>&1 || die "could not create user $pg_os_user"
fi

# --- the server venv -------------------------------------------------------------------------------
if venv_complete; then
  log "server venv complete: $venv"
  echo "$venv"
  exit 0
fi
[[ -z "${EARTHOPS_STACAPI_VENV:-}" ]] ||
  die "EARTHOPS_STACAPI_VENV=$venv does not hold stac-fastapi-pgstac, pypgstac and uvicorn"

command -v "$python" >/dev/null || die "no Python interpreter '$python' (set EARTHOPS_STACAPI_PYTHON)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "$python is $("$python" -V 2>&1); the server venv needs Python >= 3.11 (set EARTHOPS_STACAPI_PYTHON)"

mkdir -p "$cache"
exec 9>"$cache/.stacapi-venv.lock"
flock 9  # one builder at a time; a second one waits, then finds the venv complete
if venv_complete; then
  log "server venv completed by another build: $venv"
  echo "$venv"
  exit 0
fi
for stale in "$cache"/.stacapi-venv-"$req_hash".tmp-*; do  # left by killed builds; we hold the lock
  [[ -e "$stale" ]] && rm -rf "$stale"
done
tmp="$(mktemp -d "$cache/.stacapi-venv-$req_hash.tmp-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
chmod 0755 "$tmp"

t0=$SECONDS
"$python" -m venv "$tmp/venv"
quietly "$setup_log" "building the STAC API server's venv from $(basename "$requirements") with $("$python" -V 2>&1)" \
  "about 50 s" -- "$tmp/venv/bin/python" -m pip install --no-input --disable-pip-version-check --progress-bar off \
  -r "$requirements" || die "pip could not install the server's requirements (its output: $setup_log)"
"$tmp/venv/bin/python" -m pip check >&2 || die "the pinned server requirements are inconsistent (pip check)"
"$tmp/venv/bin/python" -c 'import stac_fastapi.pgstac.app, pypgstac.load, uvicorn' >/dev/null 2>&1 ||
  die "the server venv cannot import stac_fastapi.pgstac / pypgstac / uvicorn"
echo "$req_hash" > "$tmp/venv/$marker_name"

rm -rf "$venv.old"
[[ -e "$venv" ]] && mv -T "$venv" "$venv.old"  # an incomplete or broken one
mv -T "$tmp/venv" "$venv"
rm -rf "$venv.old"
venv_complete || die "the server venv does not work after moving it to $venv"
log "server venv built in $((SECONDS - t0)) s: $venv"
echo "$venv"
