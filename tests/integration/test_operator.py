"""The operator process for real: against the real API server, with the chart's own least-privilege
RBAC (a ServiceAccount token, not admin), liveness, metrics, namespace scoping, graceful shutdown."""

import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.infra.operator import running_operator
from tests.infra.proc import denied_access, log_tail, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def operator(kube_apiserver, kube_namespace, tmp_path):
    with running_operator(kube_apiserver, kube_namespace, tmp_path, tmp_path.as_uri()) as op:
        yield {"proc": op.proc, "live": op.live_port, "metrics": op.metrics_port, "log": op.log,
               "namespace": kube_namespace, "op": op}


DEPLOYMENT = "examples/ship-iceberg/04-deployment.yaml"  # waits for its TuningExperiment, which is not there
KIND, NAME = "ModelDeployment", "iceberg-classifier"


def _status(kube_apiserver, ns, name):
    return kube_apiserver.get("earthops.dev/v1alpha1", KIND, name, ns).get("status") or {}


def test_the_operator_answers_for_its_kinds_with_least_privilege(kube_apiserver, operator, tmp_path):
    ns = operator["namespace"]
    doc = yaml.safe_load((ROOT / DEPLOYMENT).read_text())
    doc["metadata"]["namespace"] = ns
    kube_apiserver.apply(doc)
    wait_for(lambda: _status(kube_apiserver, ns, NAME).get("observedGeneration") == 1, timeout=30,
             what="status of generation 1", proc=operator["proc"], log_path=operator["log"])
    status = _status(kube_apiserver, ns, NAME)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert status["phase"] == "Pending" and ready["reason"] == "TuningExperimentNotReady" and ready["status"] == "False"
    assert "TuningExperiment 'iceberg-tuning' not found" in status["message"]

    # a spec change is a new generation; the condition's transition time stays (its status did not change)
    time.sleep(1.1)
    kube_apiserver.kubectl("patch", "-n", ns, f"{KIND.lower()}/{NAME}", "--type=merge", "-p",
                           '{"spec": {"replicas": {"max": 5}}}')
    wait_for(lambda: _status(kube_apiserver, ns, NAME).get("observedGeneration") == 2, timeout=30,
             what="status of generation 2", proc=operator["proc"], log_path=operator["log"])
    ready2 = next(c for c in _status(kube_apiserver, ns, NAME)["conditions"] if c["type"] == "Ready")
    assert ready2["lastTransitionTime"] == ready["lastTransitionTime"] and ready2["observedGeneration"] == 2

    events = kube_apiserver.kubectl("get", "events", "-n", ns, "-o", "yaml").stdout
    assert "TuningExperimentNotReady" in events

    # namespace scoping: a resource elsewhere is not touched
    other = kube_apiserver.create_namespace()
    doc["metadata"]["namespace"] = other
    kube_apiserver.apply(doc)
    time.sleep(3)
    assert _status(kube_apiserver, other, NAME) == {}

    code, text = operator["op"].get("/metrics")
    assert code == 200
    assert f'earthops_reconcile_total{{kind="{KIND}",result="waiting"}}' in text
    assert "earthops_operator_info" in text

    log = log_tail(operator["log"], 400)
    assert not denied_access(log), log


def test_sigterm_shuts_the_operator_down_gracefully(operator):
    proc = operator["proc"]
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the operator did not stop within 30 s of SIGTERM:\n{log_tail(operator['log'])}")
    assert code == 0, log_tail(operator["log"])
