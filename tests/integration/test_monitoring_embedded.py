"""Drift on one machine: `earthops run -f` on a ModelDeployment with monitoring serves the real
predictor; the embedded executor reads the deployment's drift reports as they come and records
status.drift and the Drift condition (observedGeneration), printing a Warning when drift starts and a
Normal line when it ends; `earthops describe modeldeployment` prints the per-band table."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from earthops.core.store import Store
from tests.infra.drift_data import register_peak_model, s1_pool, v2_bands
from tests.infra.proc import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
NS, NAME, MODEL = "default", "ice-watch", "peak"
URL = re.compile(r"serving at (http://127\.0\.0\.1:\d+)")
WINDOW = 10  # requests (of 8 chips)


def _infer(url: str, hh: np.ndarray, hv: np.ndarray) -> None:
    req = urllib.request.Request(f"{url}/v2/models/{NAME}/infer", data=json.dumps(v2_bands(hh, hv)).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as reply:
        assert reply.status == 200


def test_embedded_status_shows_drift_starting_and_ending(tmp_path):
    store = Store.from_uri((tmp_path / "store").as_uri())
    register_peak_model(store, NS, MODEL)
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "earthops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": NAME, "namespace": NS},
        "spec": {"modelRef": {"model": MODEL}, "monitoring": {"window": WINDOW, "interval": "1h", "threshold": 0.2}}}))
    log = tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "earthops.control.cli", "run", "-f", str(manifest), "--port", "0",
                             "--store", store.uri], cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    pool = s1_pool()
    state_key = f"deployments/{NS}/{NAME}/resource.json"

    def status() -> dict:
        return store.read_json(state_key).get("status") or {}

    def drift_condition() -> dict:
        return next((c for c in status().get("conditions") or [] if c["type"] == "Drift"), {})

    try:
        wait_for(lambda: URL.search(log.read_text(errors="replace")) is not None, timeout=240,
                 what="the local model server", proc=proc, log_path=log)
        url = URL.search(log.read_text())[1]
        assert drift_condition()["reason"] == "NoWindowYet"

        def window(start: int, shift_hv: float) -> None:
            for i in range(start, start + 8 * WINDOW, 8):
                _infer(url, pool.chips[i:i + 8, 0], pool.chips[i:i + 8, 1] + np.float32(shift_hv))

        window(0, 3.0)
        wait_for(lambda: drift_condition().get("status") == "True", timeout=60, what="Drift=True",
                 proc=proc, log_path=log)
        drifted = status()
        assert drifted["drift"]["detected"] and drifted["drift"]["band"] == "HV" and drifted["drift"]["score"] > 0.2
        assert drift_condition()["reason"] == "DriftDetected" and drift_condition()["observedGeneration"] == 1
        assert drifted["phase"] == "Ready"
        described = subprocess.run([sys.executable, "-m", "earthops.control.cli", "describe", "modeldeployment", NAME,
                                    "--store", store.uri], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert described.returncode == 0, described.stderr
        table = described.stdout[described.stdout.index("Drift (window"):].splitlines()
        assert table[1].split()[:2] == ["BAND", "PSI"] and table[2].split()[0] == "HV" and table[2].split()[-1] == "yes"

        window(8 * WINDOW, 0.0)
        wait_for(lambda: drift_condition().get("status") == "False", timeout=60, what="Drift=False",
                 proc=proc, log_path=log)
        assert status()["drift"]["detected"] is False and drift_condition()["reason"] == "NoDrift"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    text = log.read_text()
    assert f"ModelDeployment {NS}/{NAME}: Warning DriftDetected: " in text and "drift in HV" in text
    assert f"ModelDeployment {NS}/{NAME}: Normal DriftEnded: " in text
    assert text.index("Warning DriftDetected") < text.index("Normal DriftEnded")


def test_a_reference_without_a_model_band_fails_the_deployment_naming_it(tmp_path):
    store = Store.from_uri((tmp_path / "store").as_uri())
    register_peak_model(store, NS, MODEL, without="HV")
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "earthops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": NAME, "namespace": NS},
        "spec": {"modelRef": {"model": MODEL}}}))
    result = subprocess.run([sys.executable, "-m", "earthops.control.cli", "run", "-f", str(manifest), "--port", "0",
                             "--predict-once", "--store", store.uri], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    status = store.read_json(f"deployments/{NS}/{NAME}/resource.json")["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    drift = next(c for c in status["conditions"] if c["type"] == "Drift")
    assert status["phase"] == "Failed" and ready["reason"] == "PredictorDidNotStart"
    assert "no statistics for band 'HV'" in status["message"]
    assert drift["status"] == "Unknown" and drift["reason"] == "MonitoringFailed"
    assert f"models/{NS}/{MODEL}/v1/stats.json" in drift["message"] and "'HV'" in drift["message"]
