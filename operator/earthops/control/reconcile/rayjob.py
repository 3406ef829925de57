"""A resource -> the KubeRay RayJob (and the ConfigMap holding the resource) that runs it.

The RayJob runs ``python -m earthops_runtime run`` — the very command the embedded executor runs
locally — on a Ray cluster shaped by ``spec.compute``; KubeRay tears the cluster down when the job
ends. Both children are owned by the resource, so deleting it deletes them (garbage collection).

Every pod of the run (head, workers, KubeRay's autoscaler sidecar and its job submitter) meets the
``restricted`` Pod Security Standard: non-root as Ray's image user, no privilege escalation, all
capabilities dropped, the ``RuntimeDefault`` seccomp profile; and a read-only root filesystem, with an
emptyDir at /tmp (Ray's session folder, and the caches moved there from the home folder).
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from earthops import __version__
from earthops.api import API_VERSION, KINDS, KindInfo, Resource
from earthops.api.common import RayCompute, RayNodeGroup, duration_seconds
from earthops.control.status import Execution
from earthops.core.inputs import input_args
from earthops.core.rayenv import RAY_WORKER_ENV

RAY_VERSION = "2.60.0"
RESOURCE_MOUNT = "/etc/earthops"
RESOURCE_FILE = "resource.json"
LABEL_KIND = "earthops.dev/kind"
LABEL_NAME = "earthops.dev/name"
LABEL_RUN = "earthops.dev/run-id"
TTL_AFTER_FINISHED = 600
#: The Ray image with earthops_runtime (runtimes/Dockerfile) of this version, for specs that name none.
DEFAULT_RUNTIME_IMAGE = f"ghcr.io/earthops/runtime:{__version__}"
#: The user of Ray's images (rayproject/ray, and runtimes/Dockerfile built on it): ``ray``, uid 1000, whose
#: primary group is ``users`` (gid 100); it owns /home/ray and the Python environment in it.
RAY_UID = 1000
RAY_GID = 100
#: KubeRay's own name of the job submitter container (the one it makes when given no template).
SUBMITTER_CONTAINER = "ray-job-submitter"


def pod_security_context() -> dict[str, Any]:
    """Pod-level half of the ``restricted`` Pod Security Standard, as Ray's image user."""
    return {"runAsNonRoot": True, "runAsUser": RAY_UID, "runAsGroup": RAY_GID, "fsGroup": RAY_GID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    """Container-level half of the ``restricted`` Pod Security Standard, and a read-only root filesystem
    (the container writes only to :data:`SCRATCH_VOLUME`). KubeRay copies the Ray container's to the
    ``wait-gcs-ready`` init container it adds to workers; the autoscaler sidecar gets it through
    ``autoscalerOptions`` (KubeRay mounts its log folder, /tmp/ray, into the sidecar)."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
            "readOnlyRootFilesystem": True, "seccompProfile": {"type": "RuntimeDefault"}}


#: The one writable folder of a pod whose root filesystem is read-only: /tmp, an emptyDir (Ray's session
#: folder /tmp/ray, temporary files, and the caches of :data:`SCRATCH_ENV`).
SCRATCH_VOLUME = {"name": "scratch", "emptyDir": {}}
SCRATCH_MOUNT = {"name": "scratch", "mountPath": "/tmp"}
#: Caches and settings the libraries keep under the (read-only) home folder by default, moved to /tmp:
#: numba's compiled kernels and torch's hub (XDG_CACHE_HOME), matplotlib's settings (XDG_CONFIG_HOME).
SCRATCH_ENV = [{"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"}, {"name": "XDG_CONFIG_HOME", "value": "/tmp/.config"}]


def runs_as_rayjob(kind: str) -> bool:
    """Whether the operator runs ``kind`` as a RayJob (the kinds with a runtime whose child is one;
    ModelDeployment is served by an InferenceService, not run)."""
    return KINDS[kind].runtime is not None and KINDS[kind].child == "RayJob"


def serves(kind: str) -> bool:
    """Whether the operator serves ``kind`` with a KServe InferenceService (ModelDeployment)."""
    return KINDS[kind].runtime is not None and KINDS[kind].child == "InferenceService"


@dataclass(frozen=True)
class OperatorDefaults:
    """What the operator adds to every child: the runtime image (RayJobs, and the predictor of an
    InferenceService: it holds ``earthops_runtime.serving``) and the default store."""

    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    store_uri: str = ""


def child_name(resource: Resource[Any, Any], run: str) -> str:
    """``<name>-<run-id>``, shortened to fit: KubeRay derives pod names from it (63-char limit)."""
    base = f"{resource.name}-{run}".lower()
    if len(base) <= 40:
        return base
    return f"{base[: 40 - len(run) - 1].rstrip('-')}-{run}"


def labels(resource: Resource[Any, Any], run: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": "earthops",
        "app.kubernetes.io/part-of": "earthops",
        LABEL_KIND: resource.kind.lower(),
        LABEL_NAME: resource.name[:63],
        LABEL_RUN: run,
    }


def owner_reference(resource: Resource[Any, Any]) -> dict[str, Any]:
    if not resource.metadata.uid:
        raise ValueError(f"{resource.kind} {resource.namespace}/{resource.name} has no uid (not read from the API server)")
    return {
        "apiVersion": API_VERSION,
        "kind": resource.kind,
        "name": resource.name,
        "uid": resource.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _quantity(value: int | str) -> str:
    return str(value)


def _pod_template(image: str, group: RayNodeGroup, compute: RayCompute, *, container: str, env: list[dict[str, Any]],
                  env_from: list[dict[str, Any]], config_map: str, node_selector: dict[str, str]) -> dict[str, Any]:
    limits: dict[str, str] = {"cpu": _quantity(group.cpu), "memory": _quantity(group.memory)}
    if group.gpu:
        limits["nvidia.com/gpu"] = str(group.gpu)
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": container,
                "image": image,
                "resources": {"requests": dict(limits), "limits": limits},
                "env": env,
                **({"envFrom": env_from} if env_from else {}),
                "volumeMounts": [{"name": "earthops-resource", "mountPath": RESOURCE_MOUNT, "readOnly": True},
                                 dict(SCRATCH_MOUNT)],
                "securityContext": container_security_context(),
            }
        ],
        "volumes": [{"name": "earthops-resource", "configMap": {"name": config_map}}, dict(SCRATCH_VOLUME)],
        "securityContext": pod_security_context(),
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    if compute.tolerations:
        spec["tolerations"] = [t.wire() for t in compute.tolerations]
    if compute.service_account_name:
        spec["serviceAccountName"] = compute.service_account_name
    return {"spec": spec}


def _check_trial_fits(spec: Any, compute: RayCompute) -> None:
    """A trial asking for more GPUs than any worker pod has would wait forever: refuse the spec."""
    trial = getattr(spec, "resources", None)
    gpu = getattr(trial, "gpu", 0) or 0
    if gpu > 0:
        most = max((g.gpu for g in compute.worker_groups if g.max_replicas > 0), default=0)
        if gpu > most:
            raise ValueError(f"spec.resources.gpu is {gpu:g} per trial but the largest worker pod in "
                             f"spec.compute.workerGroups has {most} GPU(s): no trial could ever be scheduled")


def desired_children(resource: Resource[Any, Any], *, run: str, run_key: str, generation: int,
                     defaults: OperatorDefaults, inputs: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The ConfigMap and the RayJob that run ``resource``'s generation ``generation`` as ``run``.

    ``inputs``: the published runs it references (:func:`earthops.control.reconcile.inputs.resolve_inputs`),
    passed to the runtime as ``--input key=URI``; every reference of the kind must be there."""
    info = KINDS[resource.kind]
    if info.runtime is None:
        raise ValueError(f"{resource.kind} has no runtime in this version")
    if not runs_as_rayjob(resource.kind):
        raise ValueError(f"{resource.kind} is not run as a RayJob (it is served by a KServe {info.child})")
    inputs = dict(inputs or {})
    unresolved = sorted(set(info.references(resource.spec)) - set(inputs))
    if unresolved:
        raise ValueError(f"{resource.kind} {resource.namespace}/{resource.name}: unresolved inputs {', '.join(unresolved)}")
    spec = resource.spec
    compute: RayCompute = spec.compute
    _check_trial_fits(spec, compute)
    storage = KindInfo.storage(spec)
    store_uri = (storage.uri if storage and storage.uri else None) or defaults.store_uri
    if not store_uri:
        raise ValueError("no store: set the resource's storage.uri or start the operator with --store")
    name = child_name(resource, run)
    meta_labels = labels(resource, run)
    owner = owner_reference(resource)

    wire = resource.wire()
    wire.pop("status", None)
    wire["metadata"] = {k: v for k, v in wire["metadata"].items() if k in ("name", "namespace", "uid", "labels")}
    wire["metadata"]["generation"] = generation
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-resource", "namespace": resource.namespace, "labels": meta_labels,
                     "ownerReferences": [owner]},
        "data": {RESOURCE_FILE: json.dumps(wire, sort_keys=True)},
    }

    env = [{"name": "EARTHOPS_STORE", "value": store_uri}, {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
           *({"name": k, "value": v} for k, v in RAY_WORKER_ENV.items()), *SCRATCH_ENV]
    env_from = [{"secretRef": {"name": storage.secret_ref.name}}] if storage and storage.secret_ref else []
    image = compute.image or defaults.runtime_image
    entrypoint = shlex.join([
        "python", "-m", "earthops_runtime", "run", "--entrypoint", info.runtime,
        "--resource", f"{RESOURCE_MOUNT}/{RESOURCE_FILE}", "--store", store_uri, "--run-key", run_key, "--run-id", run,
        *input_args(inputs),
    ])
    head = {
        # the head schedules; work goes to the workers (num-cpus 0 keeps tasks off it)
        "rayStartParams": {"num-cpus": "0"},
        "template": _pod_template(image, compute.head, compute, container="ray-head", env=env, env_from=env_from,
                                  config_map=config_map["metadata"]["name"], node_selector=dict(compute.node_selector)),
    }
    workers = [
        {
            "groupName": g.name,
            "replicas": g.replicas,
            "minReplicas": g.min_replicas,
            "maxReplicas": g.max_replicas,
            "rayStartParams": {},
            "template": _pod_template(image, g, compute, container="ray-worker", env=env, env_from=env_from,
                                      config_map=config_map["metadata"]["name"],
                                      node_selector={**compute.node_selector, **g.node_selector}),
        }
        for g in compute.worker_groups
    ]
    autoscaling = any(g.max_replicas > g.replicas for g in compute.worker_groups)
    cluster: dict[str, Any] = {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": autoscaling,
        "headGroupSpec": head,
        "workerGroupSpecs": workers,
    }
    if autoscaling:
        cluster["autoscalerOptions"] = {"securityContext": container_security_context()}
    # KubeRay's default submitter pod has no securityContext: a restricted namespace would refuse it.
    submitter = {
        "spec": {
            "restartPolicy": "Never",
            "securityContext": pod_security_context(),
            "containers": [{"name": SUBMITTER_CONTAINER, "image": image,
                            # what KubeRay gives its default submitter
                            "resources": {"requests": {"cpu": "500m", "memory": "200Mi"},
                                          "limits": {"cpu": "1", "memory": "1Gi"}},
                            "env": list(SCRATCH_ENV), "volumeMounts": [dict(SCRATCH_MOUNT)],
                            "securityContext": container_security_context()}],
            "volumes": [dict(SCRATCH_VOLUME)],
        }
    }
    job_spec: dict[str, Any] = {
        "entrypoint": entrypoint,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": TTL_AFTER_FINISHED,
        "submissionMode": "K8sJobMode",
        "submitterPodTemplate": submitter,
        "rayClusterSpec": cluster,
    }
    timeout = getattr(spec, "timeout", None)
    if timeout:
        job_spec["activeDeadlineSeconds"] = max(1, math.ceil(duration_seconds(timeout) or 0))
    rayjob = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "namespace": resource.namespace, "labels": meta_labels, "ownerReferences": [owner]},
        "spec": job_spec,
    }
    return [config_map, rayjob]


def execution_from_rayjob(status: dict[str, Any] | None) -> Execution:
    """KubeRay's RayJob status -> what the status derivation needs (pure)."""
    from datetime import datetime

    status = status or {}
    deployment = status.get("jobDeploymentStatus") or ""
    job = status.get("jobStatus") or ""
    message = status.get("message") or ""

    def ts(key: str) -> datetime | None:
        value = status.get(key)
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None

    times = {"start_time": ts("startTime"), "end_time": ts("endTime")}
    if deployment in ("Failed", "ValidationFailed") or job in ("FAILED", "STOPPED"):
        reason = status.get("reason") or ("InvalidRayJob" if deployment == "ValidationFailed" else "RayJobFailed")
        return Execution("Failed", reason, message or f"the RayJob ended as {deployment or job}", **times)
    if deployment == "Complete" and job == "SUCCEEDED":
        return Execution("Succeeded", "", message, **times)
    if deployment in ("Running", "Complete") or job in ("RUNNING", "SUCCEEDED"):
        return Execution("Running", "", message, **times)
    if deployment in ("Suspended", "Suspending"):
        return Execution("Pending", "Suspended", message or "the RayJob is suspended", **times)
    return Execution("Pending", "RayClusterStarting", message or "waiting for the Ray cluster to start", **times)
