"""The pure RayJob builder and the RayJob -> execution projection."""

import dataclasses
import json
from pathlib import Path

import pytest

from earthops.api import KINDS, load_manifests
from earthops.reconcile.rayjob import OperatorDefaults, child_name, desired_children, execution_from_rayjob
from earthops.reconcile.runs import run_id, run_key

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = OperatorDefaults(runtime_image="registry.example/earthops-runtime:1", store_uri="s3://store/root")


@pytest.fixture
def runnable(monkeypatch):
    for kind in ("EODataset", "TuningExperiment"):
        monkeypatch.setitem(KINDS, kind, dataclasses.replace(KINDS[kind], runtime=f"earthops_runtime.{kind.lower()}:run"))


def _resource(path: str):
    r = load_manifests([ROOT / path])[0]
    return r.model_copy(update={"metadata": r.metadata.model_copy(update={"uid": "1234-uid", "generation": 3})})


def test_rayjob_runs_the_runtime_command_on_the_declared_cluster(runnable):
    r = _resource("examples/landcover-s2/02-tuning.yaml")
    run = run_id(3, r)
    config_map, job = desired_children(r, run=run, run_key=run_key(r, run), generation=3, defaults=DEFAULTS)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    owner = job["metadata"]["ownerReferences"][0]
    assert owner == {"apiVersion": "earthops.dev/v1alpha1", "kind": "TuningExperiment", "name": "landcover-unet",
                     "uid": "1234-uid", "controller": True, "blockOwnerDeletion": True}
    assert config_map["metadata"]["ownerReferences"] == [owner]
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert "activeDeadlineSeconds" not in spec  # no timeout in this example
    assert spec["entrypoint"].startswith("python -m earthops_runtime run --entrypoint earthops_runtime.tuningexperiment:run")
    assert f"--run-key experiments/default/landcover-unet/{run}" in spec["entrypoint"]
    assert "--store s3://store/root" in spec["entrypoint"]
    [gpu_group] = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert (gpu_group["groupName"], gpu_group["replicas"], gpu_group["maxReplicas"]) == ("gpu", 2, 2)
    pod = gpu_group["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["containers"][0]["image"] == "registry.example/earthops-runtime:1"
    stored = json.loads(config_map["data"]["resource.json"])
    assert stored["spec"] == r.wire()["spec"] and stored["metadata"]["generation"] == 3


def test_timeout_credentials_and_store_come_from_the_spec(runnable):
    r = _resource("examples/stac-api/01-dataset.yaml")
    _, job = desired_children(r, run="g3-abc", run_key="k", generation=3, defaults=DEFAULTS)
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["envFrom"] == [{"secretRef": {"name": "eo-datasets-s3"}}]
    assert {"name": "EARTHOPS_STORE", "value": "s3://eo-datasets/svalbard"} in head["env"]
    assert "secret" not in json.dumps(head["env"]).lower()
    tex = _resource("examples/ship-iceberg/02-tuning.yaml")
    _, job = desired_children(tex, run="g1-x", run_key="k", generation=1, defaults=DEFAULTS)
    assert job["spec"]["activeDeadlineSeconds"] == 7200


def test_unrunnable_or_unowned_resources_are_refused(runnable):
    with pytest.raises(ValueError, match="no runtime"):
        desired_children(_resource("examples/ship-iceberg/03-ablation.yaml"), run="g1-x", run_key="k", generation=1,
                         defaults=DEFAULTS)
    no_uid = load_manifests([ROOT / "examples/ship-iceberg/01-dataset.yaml"])[0]
    with pytest.raises(ValueError, match="has no uid"):
        desired_children(no_uid, run="g1-x", run_key="k", generation=1, defaults=DEFAULTS)
    with pytest.raises(ValueError, match="no store"):
        desired_children(_resource("examples/ship-iceberg/01-dataset.yaml"), run="g1-x", run_key="k", generation=1,
                         defaults=OperatorDefaults())


def test_child_names_fit_kubernetes_limits():
    r = load_manifests([ROOT / "examples/ship-iceberg/01-dataset.yaml"])[0]
    long = r.model_copy(update={"metadata": r.metadata.model_copy(update={"name": "a" * 60})})
    name = child_name(long, "g12-0123abcd")
    assert len(name) <= 40 and name.endswith("-g12-0123abcd")
    assert child_name(r, "g1-0123abcd") == "iceberg-chips-g1-0123abcd"


@pytest.mark.parametrize(
    "status, state, reason",
    [
        (None, "Pending", "RayClusterStarting"),
        ({"jobDeploymentStatus": "Initializing"}, "Pending", "RayClusterStarting"),
        ({"jobDeploymentStatus": "Running", "jobStatus": "PENDING"}, "Running", ""),
        ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "startTime": "2026-11-24T10:00:00Z"}, "Running", ""),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "endTime": "2026-11-24T11:00:00Z"}, "Succeeded", ""),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"}, "Failed", "RayJobFailed"),
        ({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "message": "past deadline"}, "Failed",
         "DeadlineExceeded"),
        ({"jobDeploymentStatus": "ValidationFailed"}, "Failed", "InvalidRayJob"),
        ({"jobDeploymentStatus": "Suspended"}, "Pending", "Suspended"),
    ],
)
def test_rayjob_status_projection(status, state, reason):
    execution = execution_from_rayjob(status)
    assert (execution.state, execution.reason) == (state, reason)
    if status and status.get("startTime"):
        assert execution.start_time.isoformat() == "2026-11-24T10:00:00+00:00"
