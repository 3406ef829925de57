"""A test run that is SIGKILLed must not leave etcd / kube-apiserver / kube-controller-manager behind.

A child ``python -m pytest`` starts an API server (etcd, kube-apiserver, kube-controller-manager, the
third-party CRDs) inside a test, reports the server's unique temporary directory, and is SIGKILLed —
no fixture teardown, no atexit. Every process of that server has the directory in its command line;
PR_SET_PDEATHSIG (tests/infra/proc.py) must have taken them all down with their parent.

The child does not use the session fixture, so that a broken project CRD (which that fixture
installs) cannot make this test fail for an unrelated reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.infra.kube import (
    REPO_ROOT,
    EnvtestUnavailable,
    ensure_binaries,
    sweep_stale_workdirs,
    third_party_crds,
)
from tests.infra.proc import unavailable, wait_for

pytestmark = pytest.mark.integration

CHILD_TEST = """
import os
import time

from tests.infra.kube import KubeApiServer, third_party_crds


def test_hold_the_server():
    with KubeApiServer(crds=third_party_crds()) as kube:
        # Tell the parent where the server lives (atomically: write, then rename), then wait.
        with open({marker!r} + ".tmp", "w") as f:
            f.write(str(kube.workdir))
        os.replace({marker!r} + ".tmp", {marker!r})
        time.sleep(300)
"""


def processes_mentioning(text: str) -> dict[int, str]:
    """pid -> command line of every live process whose command line contains ``text``."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(
                (
                    line.split()[1]
                    for line in (proc / "status").read_text().splitlines()
                    if line.startswith("State:")
                ),
                "",
            )
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if text in cmdline and state != "Z":  # a zombie is dead; it only waits to be reaped
            found[int(proc.name)] = cmdline
    return found


def test_sigkilled_test_run_leaves_no_server_processes(tmp_path: Path) -> None:
    try:  # the child needs them; build (or find) them here so its timing is only the server start
        ensure_binaries()
        third_party_crds()
    except EnvtestUnavailable as e:
        unavailable(str(e))

    marker = tmp_path / "workdir.txt"
    (tmp_path / "test_child.py").write_text(textwrap.dedent(CHILD_TEST.format(marker=str(marker))))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # keep the child away from the repo's config
    log = tmp_path / "child.log"
    with open(log, "wb") as out:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-s",
                "-p",
                "no:cacheprovider",
                "-c",
                str(tmp_path / "pytest.ini"),
                "--rootdir",
                str(tmp_path),
                str(tmp_path / "test_child.py"),
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: marker.exists() and marker.read_text() != "",
            timeout=120,
            what="the child test run",
            proc=child,
            log_path=log,
        )
    except (RuntimeError, TimeoutError) as e:
        child.kill()
        child.wait()
        pytest.fail(f"the child pytest did not start the API server: {e}")

    workdir = marker.read_text()
    started = processes_mentioning(workdir)
    names = {Path(cmd.split()[0]).name for cmd in started.values()}
    assert {"etcd", "kube-apiserver", "kube-controller-manager"} <= names, started

    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL

    deadline = time.monotonic() + 15
    while (left := processes_mentioning(workdir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == {}, f"processes left behind by the killed run: {left}"

    # The files stay (nothing ran to remove them); the next server start sweeps them.
    assert Path(workdir).exists()
    assert Path(workdir) in sweep_stale_workdirs(Path(workdir).parent)
    assert not Path(workdir).exists()
