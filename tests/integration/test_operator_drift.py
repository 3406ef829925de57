"""Drift through the operator on the real API server: a ModelDeployment with monitoring becomes an
InferenceService whose predictor command (with the monitoring flags) really runs on this machine
(tests/infra/kserve_standin.py plays KServe); requests through status.url make windows; the operator
reads the latest report from the store and sets status.drift and the Drift condition
(observedGeneration) — appearing on a window whose HV is 3 dB up, clearing on a window of test chips —
with a Warning event when drift starts and a Normal one when it ends."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from earthops.core.store import Store
from tests.infra.drift_data import register_peak_model, s1_pool, v2_bands
from tests.infra.earthops_kube import condition, wait_status
from tests.infra.kserve_standin import kserve_standin
from tests.infra.operator import running_operator

pytestmark = pytest.mark.integration
KIND, NAME, MODEL = "ModelDeployment", "ice-watch", "peak"
WINDOW = 10  # requests of 8 chips


def _window(url: str, chips: np.ndarray, shift_hv: float) -> None:
    for i in range(0, 8 * WINDOW, 8):
        body = v2_bands(chips[i:i + 8, 0], chips[i:i + 8, 1] + np.float32(shift_hv))
        req = urllib.request.Request(f"{url}/v2/models/{NAME}/infer", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as reply:
            assert reply.status == 200


def test_drift_condition_appears_and_clears_on_the_api_server(kube_apiserver, kube_namespace, tmp_path):
    kube, ns = kube_apiserver, kube_namespace
    store = Store.from_uri((tmp_path / "store").as_uri())
    register_peak_model(store, ns, MODEL)
    pool = s1_pool()
    with running_operator(kube, ns, tmp_path, store.uri) as op, kserve_standin(kube.admin, ns, NAME, tmp_path):
        def wait(what, check, timeout=90):
            return wait_status(kube, KIND, ns, NAME, op, what, check, timeout)

        kube.apply({"apiVersion": "earthops.dev/v1alpha1", "kind": KIND, "metadata": {"name": NAME, "namespace": ns},
                    "spec": {"modelRef": {"model": MODEL},
                             "monitoring": {"window": WINDOW, "interval": "1h", "threshold": 0.2}}})
        st = wait("Ready", lambda s: s.get("phase") == "Ready", timeout=240)
        assert condition(st, "Drift")["reason"] == "NoWindowYet" and "drift" not in st
        isvc = kube.get("serving.kserve.io/v1beta1", "InferenceService", NAME, ns)
        command = isvc["spec"]["predictor"]["containers"][0]["command"]
        assert command[command.index("--monitor-deployment") + 1] == f"{ns}/{NAME}"

        _window(st["url"], pool.chips, 3.0)
        st = wait("Drift=True", lambda s: any(c["type"] == "Drift" and c["status"] == "True"
                                              for c in s.get("conditions") or []))
        assert st["drift"]["detected"] is True and st["drift"]["band"] == "HV" and st["drift"]["score"] > 0.2
        drift = condition(st, "Drift")
        assert drift["reason"] == "DriftDetected" and drift["observedGeneration"] == 1 and "HV" in drift["message"]
        assert st["phase"] == "Ready"

        _window(st["url"], pool.chips[8 * WINDOW:], 0.0)
        st = wait("Drift=False", lambda s: any(c["type"] == "Drift" and c["status"] == "False"
                                               for c in s.get("conditions") or []))
        assert st["drift"]["detected"] is False and condition(st, "Drift")["reason"] == "NoDrift"
        events = kube.kubectl("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={NAME}",
                              "-o", "json").stdout
        seen = {(e["type"], e["reason"]) for e in json.loads(events)["items"]}
        assert {("Warning", "DriftDetected"), ("Normal", "DriftEnded")} <= seen, seen


def test_a_reference_without_a_model_band_shows_in_the_drift_condition(kube_apiserver, kube_namespace, tmp_path):
    kube, ns = kube_apiserver, kube_namespace
    store = Store.from_uri((tmp_path / "store").as_uri())
    register_peak_model(store, ns, MODEL, without="HV")
    with running_operator(kube, ns, tmp_path, store.uri) as op, kserve_standin(kube.admin, ns, NAME, tmp_path):
        kube.apply({"apiVersion": "earthops.dev/v1alpha1", "kind": KIND, "metadata": {"name": NAME, "namespace": ns},
                    "spec": {"modelRef": {"model": MODEL}}})
        st = wait_status(kube, KIND, ns, NAME, op, "Drift MonitoringFailed",
                         lambda s: any(c["type"] == "Drift" and c["reason"] == "MonitoringFailed"
                                       for c in s.get("conditions") or []), timeout=240)
        drift = condition(st, "Drift")
        assert drift["status"] == "Unknown" and "no statistics for band 'HV'" in drift["message"]
        assert f"models/{ns}/{MODEL}/v1/stats.json" in drift["message"]
        st = wait_status(kube, KIND, ns, NAME, op, "Failed", lambda s: s.get("phase") == "Failed", timeout=120)
        assert "no statistics for band 'HV'" in st["message"]  # the predictor's own words, through KServe's status
