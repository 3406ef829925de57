"""What a first `make test` / `make demo` shows while it sets things up: what is being built or installed
and how long it usually takes, never the tools' own noise (~190 `go: downloading` lines, apt-get's and
pip's output, setuptools' editable-install notice) — that goes to a log file whose path is printed, and
a failure shows the log's end. The real scripts run here with fake `go` / `python` that make the same
noise in no time."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EDITABLE_NOTICE = """\
  /tmp/pip-build-env-x/overlay/lib/python3.11/site-packages/setuptools/command/editable_wheel.py:354: BuildBackendWarning: Editable installation.
  !!

          ********************************************************************************
          Please be careful with folders in your working directory with the same
          name as your package as they may take precedence during imports.
          ********************************************************************************

  !!
"""


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


FAKE_GO = r"""#!/usr/bin/env bash
# `go mod edit -json`: the pins of versions.env; `go build -o OUT PKG...`: noise, then the binaries
source "$FAKE_VERSIONS"
if [[ "$1 $2" == "mod edit" ]]; then
  printf '{"Require":[{"Path":"k8s.io/kubernetes","Version":"%s"},{"Path":"go.etcd.io/etcd/server/v3","Version":"%s"}]}\n' \
    "$KUBERNETES_VERSION" "$ETCD_VERSION"
  exit 0
fi
[[ "$1" == build ]] || exit 3
for i in $(seq 1 190); do echo "go: downloading example.com/module$i v1.0.$i" >&2; done
if [[ -n "${FAKE_GO_FAIL:-}" ]]; then echo "cmd/kube-apiserver/app/server.go:12:2: undefined: options.Foo" >&2; exit 1; fi
out=""; pkgs=()
while (( $# )); do case "$1" in -o) out="$2"; shift 2 ;; -ldflags) shift 2 ;; -*) shift ;; *) pkgs+=("$1"); shift ;; esac; done
for p in "${pkgs[@]:1}"; do
  if [[ "$out" == */ ]]; then f="$out$(basename "$p")"; else f="$out"; fi
  printf '#!/bin/sh\n' > "$f"; chmod +x "$f"
done
"""


def run_build(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "fakebin"
    executable(fake / "go", FAKE_GO)
    environment = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "EARTHOPS_CACHE": str(tmp_path / "cache"),
                   "FAKE_VERSIONS": str(ROOT / "tests/envtest/versions.env"), **env}
    return subprocess.run(["bash", str(ROOT / "tests/envtest/build.sh"), "binaries"], env=environment,
                          capture_output=True, text=True, timeout=120)


def versions() -> dict[str, str]:
    lines = (ROOT / "tests/envtest/versions.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_the_kubernetes_build_says_what_it_builds_and_keeps_go_output_in_a_log(tmp_path):
    done = run_build(tmp_path)
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown
    k8s = versions()["KUBERNETES_VERSION"]
    log = tmp_path / "cache" / "envtest" / f"build-{k8s}.log"
    assert "go: downloading" not in shown
    assert f"building kube-apiserver, kube-controller-manager and kubectl {k8s} (usually 11-15 min on 2 cores" in shown
    assert f"output in {log}" in shown
    assert log.read_text().count("go: downloading") == 2 * 190  # the Kubernetes build and etcd's
    assert (tmp_path / "cache" / "envtest" / k8s / "kube-apiserver").is_file()


def test_a_failed_kubernetes_build_shows_the_end_of_its_log(tmp_path):
    failed = run_build(tmp_path, FAKE_GO_FAIL="1")
    shown = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "undefined: options.Foo" in shown and "failed with exit code 1" in shown
    assert shown.count("go: downloading") < 40  # the log's end, not all of it


FAKE_PYTHON = r"""#!/usr/bin/env bash
# `python -m venv DIR`: a venv whose python is this script; `python -m pip install ...`: pip's noise
case "$1 $2" in
  "-m venv") mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0 ;;
  "-m pip")
    if [[ "$3" == install ]]; then
      for i in $(seq 1 60); do echo "Collecting package$i==1.$i"; done
      printf '%s' "$FAKE_NOTICE" >&2
      if [[ -n "${FAKE_PIP_FAIL:-}" ]]; then echo "ERROR: No matching distribution found for torch==99" >&2; exit 1; fi
    fi
    exit 0 ;;
  "-c "*) exit 0 ;;
esac
[[ "$1" == -c ]] && exit 0
[[ "$1" == -V ]] && { echo "Python 3.11.9"; exit 0; }
exit 0
"""


def make_setup(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    venv = tmp_path / "venv"
    executable(venv / "bin" / "python", FAKE_PYTHON)
    environment = {**os.environ, "FAKE_NOTICE": EDITABLE_NOTICE, **env}
    environment.pop("MAKEFLAGS", None)
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), f"VENV={venv}", f"{venv}/.installed-stamp"],
                          env=environment, capture_output=True, text=True, timeout=120)


def test_setup_keeps_pip_and_the_editable_install_notice_in_a_log(tmp_path):
    done = make_setup(tmp_path)
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown
    assert "Editable installation" not in shown and "Collecting" not in shown and "****" not in shown
    assert f"installing earthops with every extra into {tmp_path / 'venv'}" in shown
    assert f"output in {tmp_path / 'venv' / 'install.log'}" in shown
    assert "Editable installation" in (tmp_path / "venv" / "install.log").read_text()
    assert (tmp_path / "venv" / ".installed-stamp").is_file()


def test_a_failed_setup_shows_pips_error_and_stops(tmp_path):
    failed = make_setup(tmp_path, FAKE_PIP_FAIL="1")
    shown = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "ERROR: No matching distribution found for torch==99" in shown
    assert not (tmp_path / "venv" / ".installed-stamp").exists()


def test_the_stac_api_server_venv_is_built_with_pips_output_in_a_log(tmp_path):
    # PostgreSQL from a fake bin folder (apt is then not used); the server venv from a fake python
    pg = tmp_path / "pg"
    for tool in ("postgres", "initdb", "pg_isready"):
        executable(pg / tool, "#!/bin/sh\n")
    executable(pg / "pg_config", f"#!/bin/sh\necho {pg / 'share'}\n")
    (pg / "share" / "extension").mkdir(parents=True)
    (pg / "share" / "extension" / "postgis.control").write_text("")
    python = executable(tmp_path / "fakebin" / "python3.11", FAKE_PYTHON)
    environment = {**os.environ, "EARTHOPS_CACHE": str(tmp_path / "cache"), "EARTHOPS_STACAPI_PG_BIN": str(pg),
                   "EARTHOPS_STACAPI_PYTHON": str(python), "FAKE_NOTICE": EDITABLE_NOTICE}
    done = subprocess.run(["bash", str(ROOT / "tests/stacapi/setup.sh")], env=environment, capture_output=True,
                          text=True, timeout=120)
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown
    assert "Collecting" not in shown and "Editable installation" not in shown
    assert "building the STAC API server's venv" in shown and "(usually about 50 s)" in shown
    assert f"output in {tmp_path / 'cache' / 'stacapi-setup.log'}" in shown
