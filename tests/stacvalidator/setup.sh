#!/usr/bin/env bash
# Build the virtual environment of the STAC API conformance suite (stac-api-validator, every package
# pinned in requirements.txt beside this script), apart from the project's venv:
#
#   ${EARTHOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/earthops}/stacvalidator-venv-<sha256(requirements.txt):16>
#
# Idempotent (a complete venv is kept: well under a second), built in a temporary folder beside its
# destination and renamed into place with a marker inside, under a lock, so a killed build never
# leaves a half venv that looks complete. Run it as `<venv>/bin/python` (renamed venvs carry stale
# shebangs in bin/). tests/infra/stacvalidator.py runs the suite with it (offline: schemas from
# pystac's local copies, see run.py).
#
#   setup.sh               build it when missing (about 20 s with a warm pip cache)
#   setup.sh --check       exit 0 when it is in place, 1 otherwise
#   setup.sh --print-venv  print the venv path and exit
#
# Overrides: EARTHOPS_STACVALIDATOR_PYTHON (interpreter for the venv, default python3, >= 3.11).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
requirements="$here/requirements.txt"
cache="${EARTHOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/earthops}"
req_hash="$(sha256sum "$requirements" | cut -c1-16)"
venv="$cache/stacvalidator-venv-$req_hash"
marker_name=".earthops-stacvalidator-venv"
python="${EARTHOPS_STACVALIDATOR_PYTHON:-python3}"

log() { echo "stacvalidator/setup.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
setup_log="$cache/stacvalidator-setup.log"
# shellcheck source=../../scripts/quietly.sh
source "$here/../../scripts/quietly.sh"
QUIETLY_PREFIX="stacvalidator/setup.sh: "

complete() {
  [[ -f "$venv/$marker_name" ]] && [[ "$(cat "$venv/$marker_name")" == "$req_hash" ]] &&
    "$venv/bin/python" -c 'import importlib.util as u, sys; sys.exit(not u.find_spec("stac_api_validator"))' >/dev/null 2>&1
}

case "${1:-install}" in
  --print-venv) echo "$venv"; exit 0 ;;
  --check) if complete; then log "complete: $venv"; exit 0; else log "missing: $venv"; exit 1; fi ;;
  install) ;;
  *) echo "usage: $0 [--check|--print-venv]" >&2; exit 2 ;;
esac

if complete; then
  log "conformance suite venv complete: $venv"
  echo "$venv"
  exit 0
fi
command -v "$python" >/dev/null || die "no Python interpreter '$python' (set EARTHOPS_STACVALIDATOR_PYTHON)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "$python is $("$python" -V 2>&1); the venv needs Python >= 3.11"

mkdir -p "$cache"
exec 9>"$cache/.stacvalidator-venv.lock"
flock 9
if complete; then
  log "conformance suite venv completed by another build: $venv"
  echo "$venv"
  exit 0
fi
for stale in "$cache"/.stacvalidator-venv-"$req_hash".tmp-*; do
  [[ -e "$stale" ]] && rm -rf "$stale"
done
tmp="$(mktemp -d "$cache/.stacvalidator-venv-$req_hash.tmp-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
chmod 0755 "$tmp"

t0=$SECONDS
"$python" -m venv "$tmp/venv"
quietly "$setup_log" "building the STAC API conformance suite's venv (stac-api-validator) from $(basename "$requirements")" \
  "about 20 s" -- "$tmp/venv/bin/python" -m pip install --no-input --disable-pip-version-check --progress-bar off \
  -r "$requirements" || die "pip could not install the suite's requirements (its output: $setup_log)"
"$tmp/venv/bin/python" -m pip check >&2 || die "the pinned requirements are inconsistent (pip check)"
"$tmp/venv/bin/python" -c 'import stac_api_validator.__main__' >/dev/null 2>&1 || die "the venv cannot import stac_api_validator"
echo "$req_hash" > "$tmp/venv/$marker_name"

rm -rf "$venv.old"
[[ -e "$venv" ]] && mv -T "$venv" "$venv.old"
mv -T "$tmp/venv" "$venv"
rm -rf "$venv.old"
complete || die "the venv does not work after moving it to $venv"
log "conformance suite venv built in $((SECONDS - t0)) s: $venv"
echo "$venv"
