"""Handlers of a kind that runs as a KubeRay RayJob (EODataset, TuningExperiment; ablation later).

create/update: one RayJob per spec generation (older runs' RayJobs are deleted: a spec change stops
the old run), once the resources it references are usable (a TuningExperiment waits, Pending with
``DatasetReady=False``/``DatasetNotReady``, until its EODataset is Ready; the timer checks again every
few seconds). The RayJob's runtime gets their published runs as ``--input key=URI``; a reference
deleted after the run started does not stop it. A timer follows the RayJob and the run's ``status.json`` in the store, and patches the
status with the same derivation the embedded executor uses. Deletion: children are owned by the
resource, so the garbage collector removes them; published runs stay in the store.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from earthops.api import GROUP, KINDS, VERSION, KindInfo, Resource, parse_resource
from earthops.api.runtime import STATUS_FILE, RuntimeStatus
from earthops.control.handlers import k8s
from earthops.control.handlers.metrics import RECONCILES
from earthops.control.reconcile.inputs import Lookup, not_ready_reason, resolve_inputs
from earthops.control.reconcile.rayjob import (
    LABEL_KIND,
    LABEL_NAME,
    OperatorDefaults,
    child_name,
    desired_children,
    execution_from_rayjob,
    runs_as_rayjob,
)
from earthops.control.status import Execution, derive, get_condition
from earthops.core.runs import run_id, run_key
from earthops.core.store import Store, StoreError

log = logging.getLogger("earthops.operator")
DEFAULTS = OperatorDefaults()
TERMINAL = ("Succeeded", "Failed", "Ready")
#: Ready-condition reasons of a resource waiting for a referenced one (``DatasetNotReady``, ...).
WAIT_REASONS = frozenset(not_ready_reason(kind) for kind in KINDS)


def configure(defaults: OperatorDefaults) -> None:
    global DEFAULTS
    DEFAULTS = defaults


def resource_of(body: kopf.Body) -> Resource[Any, Any]:
    doc = {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")}
    doc["metadata"] = {k: v for k, v in dict(body["metadata"]).items() if k in ("name", "namespace", "uid", "generation",
                                                                                "labels", "annotations")}
    return parse_resource(doc, f"{body['kind']} {body['metadata']['namespace']}/{body['metadata']['name']}")


#: Seconds a storage Secret read from the API server is reused: the 3 s timer of every running
#: resource would otherwise read it on every tick; a rotated Secret is picked up within this time.
SECRET_TTL_S = 30.0
_secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}


def _secret_env(namespace: str, name: str) -> dict[str, str]:
    now = time.monotonic()
    cached = _secrets.get((namespace, name))
    if cached is None or now - cached[0] > SECRET_TTL_S:
        cached = _secrets[(namespace, name)] = (now, k8s.secret_env(namespace, name))
    return cached[1]


def store_for(resource: Resource[Any, Any]) -> Store:
    """The resource's store, with one S3 client per (URI, credentials) reused across ticks."""
    storage = KindInfo.storage(resource.spec)
    uri = (storage.uri if storage and storage.uri else None) or DEFAULTS.store_uri
    env = _secret_env(resource.namespace, storage.secret_ref.name) if storage and storage.secret_ref else None
    return Store.from_uri(uri, env=env, shared=True)


def _read_runtime(resource: Resource[Any, Any], run: str) -> RuntimeStatus | None:
    store = store_for(resource)
    key = f"{run_key(resource, run)}/{STATUS_FILE}"
    if not store.exists(key):
        return None
    return RuntimeStatus.model_validate(store.read_json(key))


def _selector(resource: Resource[Any, Any]) -> str:
    return f"{LABEL_KIND}={resource.kind.lower()},{LABEL_NAME}={resource.name}"


def reference_lookup(namespace: str) -> Lookup:
    """Read a referenced resource's status from the API server; a status of an older spec generation
    counts as Pending (its new run has not started yet)."""
    def lookup(kind: str, name: str) -> dict[str, Any] | None:
        obj = k8s.get_earthops(kind, namespace, name)
        if obj is None:
            return None
        status = dict(obj.get("status") or {})
        generation = (obj.get("metadata") or {}).get("generation")
        if status and generation is not None and status.get("observedGeneration") not in (None, generation):
            status["phase"] = "Pending"
        return status

    return lookup


def _start(info: KindInfo, body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch) -> None:
    """Start the run of the current generation: resolve its inputs, then create its RayJob.

    While a referenced resource is not usable (a TuningExperiment's dataset not Ready), the status says
    so (``DatasetReady=False``, reason ``DatasetNotReady``, phase Pending), no RayJob is created, and
    :func:`follow_run`'s timer calls this again until it is."""
    resource = resource_of(body)
    generation = int(meta.get("generation") or 1)
    run = run_id(generation, resource)
    previous = {k: v for k, v in dict(status).items() if k != "kopf"}
    if previous.get("runId") == run and previous.get("phase") in TERMINAL:
        return  # resumed after a restart: this generation is done
    job_name = child_name(resource, run)
    if previous.get("runId") == run and previous.get("rayJobName") == job_name \
            and k8s.get_custom("RayJob", resource.namespace, job_name) is not None:
        return  # resumed after an operator restart: the run goes on (its inputs were resolved), the timer follows it
    resolved = resolve_inputs(resource, reference_lookup(resource.namespace), wait=True)
    if not resolved.ready:
        _stop_other_runs(body, resource, keep=None)
        new = derive(info, generation=generation, previous={"conditions": previous.get("conditions", [])},
                     execution=Execution("Pending"), blockers=resolved.blockers, met=resolved.met)
        new.update({"runId": None, "rayJobName": None, "startTime": None, "completionTime": None})
        if new.get("conditions") != previous.get("conditions") or previous.get("observedGeneration") != generation \
                or previous.get("phase") != new["phase"]:
            patch.status.update(new)
            blocker = resolved.blockers[0]
            kopf.info(body, reason=blocker.reason, message=blocker.message)
            RECONCILES.labels(info.kind, "waiting").inc()
        return
    try:
        children = desired_children(resource, run=run, run_key=run_key(resource, run), generation=generation,
                                    defaults=DEFAULTS, inputs=resolved.inputs)
    except ValueError as exc:
        patch.status.update(derive(info, generation=generation, previous=previous,
                                   execution=Execution("Failed", "InvalidSpec", str(exc)), met=resolved.met))
        kopf.warn(body, reason="InvalidSpec", message=str(exc))
        RECONCILES.labels(info.kind, "invalid").inc()
        return
    config_map, rayjob = children
    stale = _stop_other_runs(body, resource, keep=rayjob["metadata"]["name"])
    stale = k8s.delete_config_maps(resource.namespace, _selector(resource), keep=config_map["metadata"]["name"],
                                   owner_uid=resource.metadata.uid) or stale
    if stale:
        # a resource deleted and created again under its name before the garbage collector removed its
        # children: theirs have this run's names, and would be taken for this resource's, then collected
        raise kopf.TemporaryError(f"the RayJob {rayjob['metadata']['name']} or its ConfigMap of a deleted {info.kind} "
                                  "of the same name is still being removed", delay=2)
    k8s.create_if_absent(config_map)
    if k8s.create_if_absent(rayjob):
        kopf.info(body, reason="RayJobCreated", message=f"created RayJob {rayjob['metadata']['name']} for run {run}")
    if previous.get("runId") == run and previous.get("rayJobName") == rayjob["metadata"]["name"]:
        return  # resumed after an operator restart: the run goes on, the timer follows it
    new = derive(info, generation=generation, previous={"conditions": previous.get("conditions", [])},
                 execution=Execution("Pending", "RayClusterStarting", "waiting for the Ray cluster to start"),
                 met=resolved.met)
    new.update({"runId": run, "rayJobName": rayjob["metadata"]["name"]})
    patch.status.update(new)
    RECONCILES.labels(info.kind, "started").inc()


def _stop_other_runs(body: kopf.Body, resource: Resource[Any, Any], keep: str | None) -> bool:
    """A spec change stops the previous generation's run: delete every RayJob of this resource but ``keep``.
    A RayJob named ``keep`` that another object owns (a deleted resource of the same name whose children
    the garbage collector has not removed yet) is deleted too; returns whether there was one."""
    stale = False
    for old in k8s.list_custom("RayJob", resource.namespace, _selector(resource)):
        name = old["metadata"]["name"]
        if name == keep:
            owners = old["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == resource.metadata.uid for ref in owners):
                continue
            stale = True
        k8s.delete_custom("RayJob", resource.namespace, name)
        if name != keep:
            kopf.info(body, reason="RunSuperseded", message=f"deleted RayJob {name} of an older spec")
    return stale


def _waiting(info: KindInfo, previous: dict[str, Any], generation: int) -> bool:
    """Whether the status says the current generation waits for a referenced resource."""
    if previous.get("observedGeneration") != generation or previous.get("phase") != "Pending" or previous.get("rayJobName"):
        return False
    ready = get_condition(previous.get("conditions") or [], "Ready") or {}
    return ready.get("reason") in WAIT_REASONS


def register(info: KindInfo) -> None:
    @kopf.on.resume(GROUP, VERSION, info.plural)
    @kopf.on.create(GROUP, VERSION, info.plural)
    @kopf.on.update(GROUP, VERSION, info.plural, field="spec")
    def start_run(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, **_: Any) -> None:
        _start(info, body, meta, status, patch)

    @kopf.timer(GROUP, VERSION, info.plural, interval=3.0, initial_delay=1.0, sharp=False)
    def follow_run(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, **_: Any) -> None:
        previous = {k: v for k, v in dict(status).items() if k != "kopf"}
        job_name, run = previous.get("rayJobName"), previous.get("runId")
        generation = int(meta.get("generation") or 1)
        if _waiting(info, previous, generation):
            _start(info, body, meta, status, patch)  # is what it waits for usable now?
            return
        if not job_name or not run or previous.get("observedGeneration") != generation or previous.get("phase") in TERMINAL:
            return
        resource = resource_of(body)
        job = k8s.get_custom("RayJob", resource.namespace, job_name)
        if job is None:
            execution = Execution("Failed", "RayJobMissing", f"the RayJob {job_name} was deleted before the run ended")
        else:
            execution = execution_from_rayjob(job.get("status"))
        try:
            runtime = _read_runtime(resource, run)
        except StoreError as exc:
            runtime = None
            kopf.warn(body, reason="StoreUnreadable", message=str(exc))
        new = derive(info, generation=generation, previous=previous, execution=execution, runtime=runtime)
        if new.get("phase") == info.ready_phase and runtime is not None:
            new["results"] = store_for(resource).url(run_key(resource, run))
        if {k: v for k, v in new.items() if k != "conditions"} != {k: v for k, v in previous.items() if k != "conditions"} \
                or new.get("conditions") != previous.get("conditions"):
            patch.status.update(new)
            if new["phase"] in TERMINAL and previous.get("phase") not in TERMINAL:
                (kopf.info if new["phase"] == info.ready_phase else kopf.warn)(
                    body, reason=f"Run{new['phase']}", message=new.get("message", ""))
                RECONCILES.labels(info.kind, new["phase"].lower()).inc()


def register_all() -> list[str]:
    kinds = [info for info in KINDS.values() if runs_as_rayjob(info.kind)]
    for info in kinds:
        register(info)
    return [info.kind for info in kinds]
