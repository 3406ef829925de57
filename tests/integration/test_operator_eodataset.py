"""EODataset through the operator on the real API server, with the real KubeRay CRD validating the
RayJob we create; KubeRay's part is played by the simulator and the runtime's by status.json files
written into the store, so the full lifecycle runs without pods."""

import pytest
import yaml

from earthops.core.store import Store
from tests.infra.earthops_kube import apply_example, wait_status, write_runtime
from tests.infra.earthops_kube import operator_env as env  # noqa: F401 - the fixture
from tests.infra.earthops_kube import status as resource_status
from tests.infra.operator import running_operator
from tests.infra.peers import KubeRaySimulator
from tests.infra.proc import wait_for

pytestmark = pytest.mark.integration


def _dataset(kube, ns, name="iceberg-chips", **spec_changes):
    return apply_example(kube, "examples/ship-iceberg/01-dataset.yaml", ns, name, **spec_changes)


def _status(kube, ns, name):
    return resource_status(kube, "EODataset", ns, name)


def _wait(kube, ns, name, op, what, check, timeout=30):
    return wait_status(kube, "EODataset", ns, name, op, what, check, timeout)


def _runtime(store, ns, name, run, phase, **fields):
    write_runtime(store, "EODataset", ns, name, run, phase, **fields)


def test_dataset_lifecycle_created_running_succeeded_changed_deleted(env):
    kube, ns, store, op = env
    ray = KubeRaySimulator(kube.admin)
    created = _dataset(kube, ns)

    status = _wait(kube, ns, "iceberg-chips", op, "a RayJob for generation 1", lambda s: s.get("rayJobName"))
    job_name, run = status["rayJobName"], status["runId"]
    assert status["phase"] == "Pending" and run.startswith("g1-")
    job = kube.get("ray.io/v1", "RayJob", job_name, ns)  # accepted by the real KubeRay CRD schema
    assert job["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert f"--run-key datasets/{ns}/iceberg-chips/{run}" in job["spec"]["entrypoint"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    config_map = kube.get("v1", "ConfigMap", f"{job_name}-resource", ns)
    assert yaml.safe_load(config_map["data"]["resource.json"])["spec"]["bands"] == ["HH", "HV"]

    ray.job_running(ns, job_name)
    _runtime(store, ns, "iceberg-chips", run, "Running", progress={"done": 3, "total": 10, "unit": "scenes"})
    status = _wait(kube, ns, "iceberg-chips", op, "Running with progress", lambda s: s.get("progress") == "3/10 scenes")
    assert status["phase"] == "Running" and status["startTime"]

    _runtime(store, ns, "iceberg-chips", run, "Succeeded", progress={"done": 10, "total": 10, "unit": "scenes"},
             results={"chips": {"train": 70, "validation": 15, "test": 15, "total": 100},
                      "scenes": {"total": 10, "processed": 10, "failed": 0}})
    ray.job_succeeded(ns, job_name)
    status = _wait(kube, ns, "iceberg-chips", op, "Succeeded", lambda s: s.get("phase") == "Succeeded")
    assert status["chips"]["train"] == 70 and status["completionTime"]
    assert status["results"] == store.url(f"datasets/{ns}/iceberg-chips/{run}")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 1
    printed = kube.kubectl("get", "eods", "-n", ns).stdout.splitlines()
    assert printed[0].split() == ["NAME", "PHASE", "PROGRESS", "CHIPS", "AGE"]
    assert printed[1].split()[:5] == ["iceberg-chips", "Succeeded", "10/10", "scenes", "100"]  # chips in all splits

    # a spec change is a new generation: a new RayJob, and the old one is gone
    kube.kubectl("patch", "-n", ns, "eodataset/iceberg-chips", "--type=merge", "-p", '{"spec": {"bands": ["HH"], '
                 '"features": {"sar": []}, "validation": {"bandRanges": [{"band": "HH", "min": -60, "max": 30}]}}}')
    status = _wait(kube, ns, "iceberg-chips", op, "generation 2", lambda s: s.get("runId", "").startswith("g2-"))
    assert status["phase"] == "Pending" and status["observedGeneration"] == 2
    jobs = kube.kubectl("get", "rayjobs", "-n", ns, "-o", "name").stdout.split()
    assert jobs == [f"rayjob.ray.io/{status['rayJobName']}"]

    # deleting the dataset deletes its children (garbage collection); published data stays
    kube.kubectl("delete", "eodataset/iceberg-chips", "-n", ns, "--wait=true")
    wait_for(lambda: kube.kubectl("get", "rayjobs,configmaps", "-n", ns, "-l", "earthops.dev/name=iceberg-chips",
                                  "-o", "name").stdout.strip() == "", timeout=60, what="children garbage-collected")


def test_a_failed_rayjob_fails_the_dataset_with_kuberays_message(env):
    kube, ns, store, op = env
    _dataset(kube, ns, name="doomed")
    status = _wait(kube, ns, "doomed", op, "a RayJob", lambda s: s.get("rayJobName"))
    KubeRaySimulator(kube.admin).job_failed(ns, status["rayJobName"], "the Ray cluster ran past its deadline",
                                            reason="DeadlineExceeded")
    status = _wait(kube, ns, "doomed", op, "Failed", lambda s: s.get("phase") == "Failed")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "DeadlineExceeded" and "deadline" in status["message"]
    events = kube.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=doomed").stdout
    assert "RayJobCreated" in events and "RunFailed" in events


def test_the_runtimes_own_failure_reason_wins(env):
    kube, ns, store, op = env
    _dataset(kube, ns, name="empty")
    status = _wait(kube, ns, "empty", op, "a RayJob", lambda s: s.get("rayJobName"))
    _runtime(store, ns, "empty", status["runId"], "Failed", reason="EmptySource",
             message="spec.source: the search matched no scenes")
    KubeRaySimulator(kube.admin).job_failed(ns, status["rayJobName"], "Job failed", reason="AppFailed")
    status = _wait(kube, ns, "empty", op, "Failed", lambda s: s.get("phase") == "Failed")
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["reason"] == "EmptySource"
    assert "matched no scenes" in status["message"]


def test_an_operator_restart_mid_run_keeps_following_the_same_run(kube_controller_manager, kube_namespace, tmp_path):
    kube, ns = kube_controller_manager, kube_namespace
    store = Store.from_uri((tmp_path / "store").as_uri())
    with running_operator(kube, ns, tmp_path, store.uri) as op:
        _dataset(kube, ns, name="long")
        status = _wait(kube, ns, "long", op, "a RayJob", lambda s: s.get("rayJobName"))
        job_name, run = status["rayJobName"], status["runId"]
        KubeRaySimulator(kube.admin).job_running(ns, job_name)
        _runtime(store, ns, "long", run, "Running", progress={"done": 1, "total": 4, "unit": "scenes"})
        _wait(kube, ns, "long", op, "Running", lambda s: s.get("phase") == "Running")
    with running_operator(kube, ns, tmp_path, store.uri) as op:
        _runtime(store, ns, "long", run, "Running", progress={"done": 2, "total": 4, "unit": "scenes"})
        status = _wait(kube, ns, "long", op, "progress after the restart",
                       lambda s: s.get("progress") == "2/4 scenes")
    assert status["runId"] == run and status["rayJobName"] == job_name and status["phase"] == "Running"
    assert kube.kubectl("get", "rayjobs", "-n", ns, "-o", "name").stdout.split() == [f"rayjob.ray.io/{job_name}"]
