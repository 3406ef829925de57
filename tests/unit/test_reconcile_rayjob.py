"""The pure RayJob builder and the RayJob -> execution projection."""

import json
import shlex
from pathlib import Path

import pytest

from earthops.api import KINDS, load_manifests
from earthops.control.reconcile.rayjob import (
    OperatorDefaults,
    child_name,
    desired_children,
    execution_from_rayjob,
    runs_as_rayjob,
)
from earthops.core.runs import run_id, run_key

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = OperatorDefaults(runtime_image="registry.example/earthops-runtime:1", store_uri="s3://store/root")


DATASET_RUN = "s3://store/root/datasets/default/landcover/g1-0123abcd"


@pytest.fixture
def runnable():
    assert KINDS["EODataset"].runtime == "earthops_runtime.dataset:run"
    assert KINDS["TuningExperiment"].runtime == "earthops_runtime.tuning:run"


def _resource(path: str):
    r = load_manifests([ROOT / path])[0]
    return r.model_copy(update={"metadata": r.metadata.model_copy(update={"uid": "1234-uid", "generation": 3})})


def test_rayjob_runs_the_runtime_command_on_the_declared_cluster(runnable):
    r = _resource("examples/landcover-s2/02-tuning.yaml")
    run = run_id(3, r)
    config_map, job = desired_children(r, run=run, run_key=run_key(r, run), generation=3, defaults=DEFAULTS,
                                       inputs={"dataset": DATASET_RUN})
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    owner = job["metadata"]["ownerReferences"][0]
    assert owner == {"apiVersion": "earthops.dev/v1alpha1", "kind": "TuningExperiment", "name": "landcover-unet",
                     "uid": "1234-uid", "controller": True, "blockOwnerDeletion": True}
    assert config_map["metadata"]["ownerReferences"] == [owner]
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert "activeDeadlineSeconds" not in spec  # no timeout in this example
    assert spec["entrypoint"].startswith("python -m earthops_runtime run --entrypoint earthops_runtime.tuning:run")
    assert f"--run-key experiments/default/landcover-unet/{run}" in spec["entrypoint"]
    assert "--store s3://store/root" in spec["entrypoint"]
    assert shlex.split(spec["entrypoint"])[-2:] == ["--input", f"dataset={DATASET_RUN}"]
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
    assert "--input" not in job["spec"]["entrypoint"]  # a dataset references nothing
    tex = _resource("examples/ship-iceberg/02-tuning.yaml")
    _, job = desired_children(tex, run="g1-x", run_key="k", generation=1, defaults=DEFAULTS,
                              inputs={"dataset": DATASET_RUN})
    assert job["spec"]["activeDeadlineSeconds"] == 7200  # spec.timeout: 2h
    assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] == 600
    # the default cluster: a CPU head that schedules only, one CPU worker group, no GPUs anywhere
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"] == {"num-cpus": "0"}
    assert [g["groupName"] for g in cluster["workerGroupSpecs"]] == ["workers"]
    assert "nvidia.com/gpu" not in json.dumps(cluster)


def test_a_tuning_experiment_with_gpu_workers_and_fractional_trials(runnable):
    tex = _resource("examples/ship-iceberg/02-tuning.yaml")
    spec = tex.spec.model_validate({
        **tex.spec.wire(), "storage": {"uri": "s3://experiments/iceberg", "secretRef": {"name": "s3-creds"}},
        "resources": {"cpu": 2, "gpu": 0.25},
        "compute": {"image": "registry.example/earthops-runtime:gpu",
                    "head": {"cpu": 1, "memory": "4Gi"},
                    "nodeSelector": {"pool": "ml"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "workerGroups": [
                        {"name": "cpu", "replicas": 1, "maxReplicas": 1, "cpu": 4, "memory": "8Gi"},
                        {"name": "gpu", "replicas": 1, "minReplicas": 0, "maxReplicas": 4, "cpu": 8, "memory": "32Gi",
                         "gpu": 2, "nodeSelector": {"nvidia.com/gpu.product": "H100"}}]},
    })
    tex = tex.model_copy(update={"spec": spec})
    _, job = desired_children(tex, run="g3-x", run_key="experiments/default/iceberg-tuning/g3-x", generation=3,
                              defaults=DEFAULTS, inputs={"dataset": DATASET_RUN})
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True  # the GPU group may grow to 4
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["resources"]["limits"] == {"cpu": "1", "memory": "4Gi"}
    assert head["nodeSelector"] == {"pool": "ml"}
    cpu, gpu = cluster["workerGroupSpecs"]
    assert cpu["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "4", "memory": "8Gi"}
    assert (gpu["groupName"], gpu["replicas"], gpu["minReplicas"], gpu["maxReplicas"]) == ("gpu", 1, 0, 4)
    pod = gpu["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert container["image"] == "registry.example/earthops-runtime:gpu"
    assert pod["nodeSelector"] == {"pool": "ml", "nvidia.com/gpu.product": "H100"}
    for p in (head, cpu["template"]["spec"], pod):
        assert p["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert p["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
        assert {"name": "EARTHOPS_STORE", "value": "s3://experiments/iceberg"} in p["containers"][0]["env"]
        # the Ray processes start with one malloc arena (trials run in a thread of their actor)
        assert {"name": "MALLOC_ARENA_MAX", "value": "1"} in p["containers"][0]["env"]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[argv.index("--store") + 1] == "s3://experiments/iceberg"
    assert argv[argv.index("--input") + 1] == f"dataset={DATASET_RUN}"
    assert job["spec"]["activeDeadlineSeconds"] == 7200


def test_trials_that_no_worker_could_run_and_unresolved_inputs_are_refused(runnable):
    tex = _resource("examples/landcover-s2/02-tuning.yaml")  # 0.5 GPU per trial, workers with 1 GPU
    greedy = tex.model_copy(update={"spec": tex.spec.model_copy(
        update={"resources": tex.spec.resources.model_copy(update={"gpu": 1.5})})})
    with pytest.raises(ValueError, match="spec.resources.gpu is 1.5 per trial but the largest worker pod .* has 1 GPU"):
        desired_children(greedy, run="g1-x", run_key="k", generation=1, defaults=DEFAULTS,
                         inputs={"dataset": DATASET_RUN})
    with pytest.raises(ValueError, match="unresolved inputs dataset"):
        desired_children(tex, run="g1-x", run_key="k", generation=1, defaults=DEFAULTS)


def test_unrunnable_or_unowned_resources_are_refused(runnable):
    with pytest.raises(ValueError, match="not run as a RayJob .*served by a KServe InferenceService"):
        desired_children(_resource("examples/ship-iceberg/04-deployment.yaml"), run="g1-x", run_key="k", generation=1,
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


# The restricted Pod Security Standard, as Ray's image user (rayproject/ray: uid 1000, group users = 100).
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100,
                  "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                        "readOnlyRootFilesystem": True, "seccompProfile": {"type": "RuntimeDefault"}}


def _pod_templates(job):
    """Every pod template of the RayJob by role: head, each worker group, the job submitter."""
    cluster = job["spec"]["rayClusterSpec"]
    return {"head": cluster["headGroupSpec"]["template"],
            **{f"worker {g['groupName']}": g["template"] for g in cluster["workerGroupSpecs"]},
            "submitter": job["spec"]["submitterPodTemplate"]}


@pytest.mark.parametrize("example", ["examples/landcover-s2/02-tuning.yaml", "examples/stac-api/01-dataset.yaml",
                                     "examples/ship-iceberg/01-dataset.yaml"])
def test_every_pod_of_the_run_meets_the_restricted_pod_security_standard(runnable, example):
    r = _resource(example)
    inputs = {"dataset": DATASET_RUN} if r.kind == "TuningExperiment" else {}
    _, job = desired_children(r, run="g3-x", run_key="k", generation=3, defaults=DEFAULTS, inputs=inputs)
    templates = _pod_templates(job)
    assert len(templates) >= 3
    for role, template in templates.items():
        pod = template["spec"]
        assert pod["securityContext"] == RESTRICTED_POD, role
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod), role
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["securityContext"] == RESTRICTED_CONTAINER, (role, c["name"])
            assert "ports" not in c or all("hostPort" not in p for p in c["ports"]), role
            # the root filesystem is read-only: /tmp (Ray's session folder, the caches) is an emptyDir
            [scratch] = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert {"name": scratch, "emptyDir": {}} in pod["volumes"], role
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env["XDG_CACHE_HOME"].startswith("/tmp/") and env["XDG_CONFIG_HOME"].startswith("/tmp/"), role
        for volume in pod.get("volumes", []):
            assert set(volume) & {"configMap", "emptyDir", "secret", "projected"}, (role, volume)
    # KubeRay runs the submitter's `ray job submit` in the image of the head; its resources are KubeRay's defaults
    [submitter] = templates["submitter"]["spec"]["containers"]
    head = templates["head"]["spec"]["containers"][0]
    assert (submitter["name"], submitter["image"]) == ("ray-job-submitter", head["image"])
    assert "command" not in submitter  # KubeRay fills in `ray job submit ... -- <entrypoint>`
    assert templates["submitter"]["spec"]["restartPolicy"] == "Never"
    assert submitter["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}


def test_the_autoscaler_sidecar_is_restricted_too(runnable):
    tex = _resource("examples/ship-iceberg/02-tuning.yaml")
    fixed = tex.spec.compute.model_copy(update={"worker_groups": [
        g.model_copy(update={"max_replicas": g.replicas}) for g in tex.spec.compute.worker_groups]})
    grows = tex.spec.compute.model_copy(update={"worker_groups": [
        g.model_copy(update={"max_replicas": g.replicas + 2}) for g in tex.spec.compute.worker_groups]})
    for compute, autoscaling in ((fixed, False), (grows, True)):
        r = tex.model_copy(update={"spec": tex.spec.model_copy(update={"compute": compute})})
        _, job = desired_children(r, run="g1-x", run_key="k", generation=1, defaults=DEFAULTS,
                                  inputs={"dataset": DATASET_RUN})
        cluster = job["spec"]["rayClusterSpec"]
        assert cluster["enableInTreeAutoscaling"] is autoscaling
        if autoscaling:  # KubeRay adds the autoscaler container to the head pod with this securityContext
            assert cluster["autoscalerOptions"] == {"securityContext": RESTRICTED_CONTAINER}
        else:
            assert "autoscalerOptions" not in cluster


def test_which_kinds_run_as_rayjobs():
    assert [k for k in KINDS if runs_as_rayjob(k)] == ["EODataset", "TuningExperiment", "AblationStudy"]


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
