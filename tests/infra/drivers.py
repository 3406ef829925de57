"""Runtime drivers as separate processes, for tests that kill one mid-run and start it again, and a
reader of what Ray Tune recorded as finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def driver(entrypoint: str, resource: Path, store_uri: str, run_key: str, inputs: dict[str, str], address: str,
           log: Path) -> subprocess.Popen:
    """``python -m earthops_runtime run`` for one run, in its own session (kill it with ``os.killpg``)."""
    cmd = [sys.executable, "-m", "earthops_runtime", "run", "--entrypoint", entrypoint,
           "--resource", str(resource), "--store", store_uri, "--run-key", run_key, "--run-id", run_key.rsplit("/")[-1],
           "--ray-address", address]
    for key, uri in inputs.items():
        cmd += ["--input", f"{key}={uri}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "runtimes"), str(ROOT / "operator"),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def finished_trials(tune_dir: Path) -> dict[str, Any]:
    """Trial id -> last result of the trials Ray Tune has recorded as finished (its experiment state)."""
    states = sorted(tune_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        doc = json.loads(states[-1].read_text())
    except (json.JSONDecodeError, OSError):
        return {}
    done = {}
    for entry in doc.get("trial_data", []):
        text = entry[0] if isinstance(entry, list) else entry
        trial = json.loads(text) if isinstance(text, str) else text
        if trial.get("status") == "TERMINATED":
            done[trial["trial_id"]] = trial
    return done


def kill_once_finished(proc: subprocess.Popen, tune_dir: Path, count: int, log: Path, timeout: float = 300) -> dict[str, Any]:
    """Wait until Ray Tune has recorded ``count`` finished trials of the driver ``proc``, then SIGKILL its
    whole session; the finished trials at that moment."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    try:
        while len(finished_trials(tune_dir)) < count:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return finished_trials(tune_dir)
