#!/usr/bin/env bash
# Build the real Kubernetes control plane the integration tests run against (the envtest pattern),
# and fetch the real KubeRay and KServe CRDs. Versions come from versions.env only.
#
#   <cache>/envtest/<KUBERNETES_VERSION>/   kube-apiserver, kube-controller-manager, kubectl, etcd
#                                           (usable as KUBEBUILDER_ASSETS)
#   <cache>/envtest/crds/kuberay-<KUBERAY_VERSION>/   ray.io RayJob + RayCluster CRDs
#   <cache>/envtest/crds/kserve-<KSERVE_VERSION>/     serving.kserve.io InferenceService CRD
#
# <cache> = ${EARTHOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/earthops}. Anything already complete
# in the cache is skipped. Each piece is built in a temporary directory beside its destination and
# renamed into place, so a killed build never leaves a half-filled cache entry.
#
# Needs Go (see kube/go.mod for the minimum version) and the Go module proxy on the first run.
#
#   build.sh              binaries and CRDs
#   build.sh binaries     binaries only
#   build.sh crds         CRDs only (e.g. when the binaries come from KUBEBUILDER_ASSETS)
#   build.sh --print-dir  print the binaries directory and exit
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache="${EARTHOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/earthops}/envtest"
bin_dir="$cache/$KUBERNETES_VERSION"
kuberay_dir="$cache/crds/kuberay-$KUBERAY_VERSION"
kserve_dir="$cache/crds/kserve-$KSERVE_VERSION"

what="${1:-all}"
case "$what" in
  --print-dir) echo "$bin_dir"; exit 0 ;;
  all|binaries|crds) ;;
  *) echo "usage: $0 [all|binaries|crds|--print-dir]" >&2; exit 2 ;;
esac

binaries=(kube-apiserver kube-controller-manager kubectl etcd)
# The stamp records what the binaries were built from: an etcd bump alone must rebuild as well.
stamp="kubernetes=$KUBERNETES_VERSION etcd=$ETCD_VERSION"

log() { echo "build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# go's own output (~190 "go: downloading" lines on a first build) goes to this log, not the terminal
build_log="$cache/build-$KUBERNETES_VERSION.log"
# shellcheck source=../../scripts/quietly.sh
source "$here/../../scripts/quietly.sh"
QUIETLY_PREFIX="build.sh: "

command -v go >/dev/null || die "Go is not installed (needed to build kube-apiserver and etcd)"
command -v python3 >/dev/null || die "python3 is not installed (needed to read 'go mod download -json')"
mkdir -p "$cache/crds"

tmp_dirs=()
cleanup() { for d in "${tmp_dirs[@]+"${tmp_dirs[@]}"}"; do rm -rf "$d"; done; }
trap cleanup EXIT

# Move a finished temporary directory onto its destination. Another build may have finished the
# same entry meanwhile; then keep theirs.
publish() {
  local tmp="$1" dest="$2"
  rm -rf "$dest.old"
  [[ -e "$dest" ]] && mv -T "$dest" "$dest.old"
  mv -T "$tmp" "$dest" 2>/dev/null || [[ -e "$dest" ]] || die "could not move $tmp to $dest"
  rm -rf "$dest.old"
}

# The generated go.mod files must pin what versions.env says (sync.sh regenerates them).
check_pin() {
  local gomod="$1" module="$2" want="$3" got
  got="$(go mod edit -json "$gomod" | python3 -c 'import json, sys
print(next((r["Version"] for r in json.load(sys.stdin).get("Require") or [] if r["Path"] == sys.argv[1]), ""))' "$module")"
  [[ "$got" == "$want" ]] ||
    die "$gomod pins $module at '${got}', versions.env says $want: run tests/envtest/sync.sh"
}

# --- binaries ------------------------------------------------------------------------------------
binaries_complete() {
  [[ "$(cat "$bin_dir/.stamp" 2>/dev/null)" == "$stamp" ]] || return 1
  local b
  for b in "${binaries[@]}"; do [[ -x "$bin_dir/$b" ]] || return 1; done
}

if [[ "$what" == crds ]]; then
  :
elif binaries_complete; then
  log "binaries for $stamp already in $bin_dir"
else
  check_pin "$here/kube/go.mod" k8s.io/kubernetes "$KUBERNETES_VERSION"
  check_pin "$here/etcd/go.mod" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"

  tmp="$(mktemp -d "$cache/.build-$KUBERNETES_VERSION.XXXXXX")"
  chmod 0755 "$tmp"  # mktemp makes it 0700; the cache may be shared
  tmp_dirs+=("$tmp")

  # Version variables as the Kubernetes release build sets them (hack/lib/version.sh); without
  # them the binaries report v0.0.0-master and kubectl warns about version skew.
  minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  kv=()
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    kv+=("-X '$pkg.gitVersion=$KUBERNETES_VERSION'" "-X '$pkg.gitMajor=1'" "-X '$pkg.gitMinor=$minor'"
         "-X '$pkg.gitTreeState=clean'")
  done

  export CGO_ENABLED=0
  start=$SECONDS
  : > "$build_log"
  log "the integration tests run against a real Kubernetes control plane, built once from source and cached in $bin_dir"
  build_kube() (cd "$here/kube" && go build -mod=readonly -trimpath -ldflags "-s -w ${kv[*]}" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl)
  build_etcd() (cd "$here/etcd" && go build -mod=readonly -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
  quietly "$build_log" "building kube-apiserver, kube-controller-manager and kubectl $KUBERNETES_VERSION" \
    "11-15 min on 2 cores the first time: ~170 MiB of Go modules to download, then compiling" -- build_kube ||
    die "the Kubernetes build failed (its output: $build_log)"
  quietly "$build_log" "building etcd $ETCD_VERSION" "1-2 min" -- build_etcd ||
    die "the etcd build failed (its output: $build_log)"
  echo "$stamp" > "$tmp/.stamp"
  publish "$tmp" "$bin_dir"
  log "binaries built in $((SECONDS - start)) s: $bin_dir"
fi

# --- third-party CRDs ----------------------------------------------------------------------------
# The CRD YAMLs are read straight from the projects' Go modules at the pinned release.
module_dir() {
  local json dir
  json="$(go mod download -json "$1@$2" 2>>"$build_log")" || die "go mod download $1@$2 failed: $json (log: $build_log)"
  dir="$(python3 -c 'import json, sys; print(json.load(sys.stdin).get("Dir", ""))' <<<"$json")"
  [[ -d "$dir" ]] || die "go mod download $1@$2 gave no module directory: $json"
  echo "$dir"
}

# fetch_crds DEST MODULE VERSION FILE...: copy FILEs (paths inside the module) into DEST.
fetch_crds() {
  local dest="$1" module="$2" version="$3"; shift 3
  if [[ -f "$dest/.complete" ]]; then
    log "CRDs of $module@$version already in $dest"
    return
  fi
  local src tmp f
  src="$(module_dir "$module" "$version")"
  tmp="$(mktemp -d "$dest.tmp.XXXXXX")"
  chmod 0755 "$tmp"
  tmp_dirs+=("$tmp")
  for f in "$@"; do
    [[ -f "$src/$f" ]] || die "$module@$version has no $f"
    install -m 0644 "$src/$f" "$tmp/"
  done
  touch "$tmp/.complete"
  publish "$tmp" "$dest"
  log "CRDs of $module@$version in $dest"
}

[[ "$what" == binaries ]] && { echo "$bin_dir"; exit 0; }

# Only the kinds earthops creates: every CRD installed costs API-server start time (they are MBs).
fetch_crds "$kuberay_dir" github.com/ray-project/kuberay/ray-operator "$KUBERAY_VERSION" \
  config/crd/bases/ray.io_rayjobs.yaml \
  config/crd/bases/ray.io_rayclusters.yaml
# config/crd/full holds the complete CRDs (config/crd/minimal has the schemas stripped); the
# kustomize patch in config/crd/patches only targets the old apiextensions v1beta1 form.
fetch_crds "$kserve_dir" github.com/kserve/kserve "$KSERVE_VERSION" \
  config/crd/full/serving.kserve.io_inferenceservices.yaml

[[ "$what" == crds ]] || echo "$bin_dir"
