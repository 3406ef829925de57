"""A Ray worker pre-empted mid-trial: the trial's worker process SIGKILLed while it trains, on the
session's local Ray, under a real tuning driver (``python -m earthops_runtime run``). The trial is
retried (``trialRetries``) and the experiment succeeds with no failed trial; the trials that had
finished are kept as they were (trained once). The driver killed mid-run is ``test_tuning.py``'s and
``test_ablation.py``'s."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from earthops.core.store import Store
from tests.infra.drivers import driver, finished_trials
from tests.integration.test_tuning import ENTRYPOINT, experiment, table

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _stat(pid: int) -> tuple[int, float]:
    """(parent pid, CPU seconds) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def training_workers() -> dict[int, float]:
    """This test session's Ray trial workers (``ray::ImplicitFunc``: descendants of this process, whose
    local Ray it started; never another session's) -> their CPU seconds so far."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                continue
            pid = int(entry.name)
            parent, cpu = _stat(pid)
            ancestors = [parent]
            while ancestors[-1] > 1 and len(ancestors) < 10:
                ancestors.append(_stat(ancestors[-1])[0])
        except (OSError, ValueError, IndexError):
            continue
        if os.getpid() in ancestors:
            found[pid] = cpu
    return found


def trial_failures(driver_log: Path) -> list[str]:
    """The trials Ray Tune reported as errored (a worker that died mid-trial), from the driver's output."""
    return [line for line in driver_log.read_text().splitlines() if "errored after" in line]


def test_a_worker_killed_mid_trial_is_retried_and_finished_trials_are_kept(tmp_path: Path, ray_local: Any,
                                                                          iceberg_dataset: Any) -> None:
    doc = experiment("iceberg-preempted", maxTrials=4, earlyStopping={"name": "none"}, trialRetries=1,
                     maxFailedTrials=0, training={"epochs": 8, "batchSize": 32, "device": "cpu"})
    resource = tmp_path / "exp.json"
    resource.write_text(json.dumps(doc))
    store_uri = (tmp_path / "store").as_uri()
    run_key = "experiments/default/iceberg-preempted/g1-preempt"
    tune_dir = tmp_path / "store" / "experiments/default/iceberg-preempted/_tune/g1-preempt"
    log = tmp_path / "driver.log"
    proc = driver(ENTRYPOINT, resource, store_uri, run_key, {"dataset": iceberg_dataset.run_uri},
                  ray_local.get_runtime_context().gcs_address, log)
    try:
        # once the first trials have finished, a worker that is training now (it used CPU time in
        # the last half second: not one idle between trials; trials of 8 epochs last several seconds,
        # so it is still training when it is killed): pre-empted
        deadline, victim = time.monotonic() + 400, None
        while victim is None:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial worker busy after the first trials finished"
            if len(finished_trials(tune_dir)) < 2:
                time.sleep(0.2)
                continue
            first = training_workers()
            time.sleep(0.5)
            later = training_workers()
            victim = next((pid for pid, cpu in later.items() if cpu - first.get(pid, cpu) >= 0.1), None)
        before = finished_trials(tune_dir)
        os.kill(victim, signal.SIGKILL)  # pre-empted: the node's worker process dies mid-epoch
        assert proc.wait(timeout=400) == 0, log.read_text()[-5000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    store = Store.from_uri(store_uri)
    status = store.read_json(f"{run_key}/status.json")
    assert status["phase"] == "Succeeded", status
    assert trial_failures(log), "no trial errored: the kill missed its worker"
    trials = table(store, run_key)
    assert len(trials) == 4 and set(trials["state"]) == {"succeeded"}, trials
    history = pd.read_parquet(store.local_path(f"{run_key}/history.parquet"))
    for tid in before:  # finished before the kill: kept, trained once (eight epochs, not sixteen)
        assert sorted(history.loc[history["trial_id"] == tid, "epoch"]) == list(range(1, 9))
