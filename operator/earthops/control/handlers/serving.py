"""Handlers of a kind served by a KServe InferenceService (ModelDeployment).

One reconcile, run on create, spec update, resume and every few seconds by a timer (it is idempotent):
resolve the models the spec names (waiting, Pending with a condition, for a TuningExperiment that has
not registered its best model yet, or a registry model that is not there), make the InferenceService
say what :func:`~earthops.control.reconcile.inferenceservice.desired_inference_service` says (create it,
or replace its spec: a new model, canary share or scale rolls out), and derive the status from the
InferenceService's own. Deletion: the InferenceService is owned by the deployment, so the garbage
collector removes it.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from earthops.api import GROUP, KINDS, VERSION, KindInfo, Resource
from earthops.control.handlers import k8s, rayjobs
from earthops.control.handlers.metrics import RECONCILES
from earthops.control.reconcile.inferenceservice import (
    Models,
    Observed,
    Registry,
    deployment_status,
    desired_inference_service,
    inference_service_name,
    needs_update,
    observe,
    pinned_models,
    resolve_models,
    store_registry,
    updated,
)
from earthops.control.reconcile.rayjob import serves
from earthops.control.status import Execution, get_condition
from earthops.core.monitoring import drift_event, read_latest
from earthops.core.runs import run_id
from earthops.core.store import StoreError

log = logging.getLogger("earthops.operator")
KIND = "InferenceService"


def _registry(resource: Resource[Any, Any]) -> Registry:
    """The registry of the deployment's store (``spec.storage``, else the operator's)."""
    return store_registry(rayjobs.store_for(resource), resource.namespace)


def _models(resource: Resource[Any, Any], current: dict[str, Any] | None, generation: int) -> Models:
    """The generation's models: those its InferenceService was made with, else resolved now."""
    pinned = pinned_models(current, generation)
    if pinned is not None and (pinned.canary is not None) == (resource.spec.canary is not None):
        return pinned
    try:
        return resolve_models(resource, rayjobs.reference_lookup(resource.namespace), _registry(resource), wait=True)
    except StoreError as exc:
        from earthops.control.status import Blocker

        return Models(blockers=(Blocker("ModelReady", "StoreUnreadable", f"the model registry cannot be read: {exc}; "
                                        "trying again"),))


def reconcile(info: KindInfo, body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch) -> None:
    resource = rayjobs.resource_of(body)
    generation = int(meta.get("generation") or 1)
    previous = {k: v for k, v in dict(status).items() if k != "kopf"}
    run = run_id(generation, resource)
    try:
        name = inference_service_name(resource)
    except ValueError as exc:
        _write(info, body, previous, deployment_status(generation=generation, previous=previous, models=Models(),
                                                       observed=Observed(Execution("Failed", "InvalidSpec", str(exc))),
                                                       run=run), patch, "invalid")
        return
    current = k8s.get_custom(KIND, resource.namespace, name)
    models = _models(resource, current, generation)
    drift = {"monitored": resource.spec.monitoring.enabled,
             "drift_report": _drift_report(resource, models.primary.version if models.primary else None)}
    if not models.ready:
        # waiting for a model: a running InferenceService of an older spec goes on serving meanwhile
        observed = Observed(Execution("Pending", models.blockers[0].reason if models.blockers else "Pending",
                                      models.blockers[0].message if models.blockers else ""))
        _write(info, body, previous, deployment_status(generation=generation, previous=previous, observed=observed,
                                                       models=models, run=run, **drift), patch, "waiting")
        return
    try:
        desired = desired_inference_service(resource, models, image=rayjobs.DEFAULTS.runtime_image,
                                            generation=generation, current=current)
    except ValueError as exc:
        observed = Observed(Execution("Failed", "InvalidSpec", str(exc)))
        _write(info, body, previous, deployment_status(generation=generation, previous=previous, observed=observed,
                                                       models=models, run=run, **drift), patch, "invalid")
        return
    if current is None:
        try:
            created = k8s.create_if_absent(desired)
        except k8s.KindNotServed as exc:  # no KServe: say so in the status, and try again on the next tick
            observed = Observed(Execution("Pending", "KServeNotInstalled", str(exc)))
            _write(info, body, previous, deployment_status(generation=generation, previous=previous,
                                                           observed=observed, models=models, run=run), patch, "waiting")
            return
        if created:
            kopf.info(body, reason="InferenceServiceCreated",
                      message=f"created InferenceService {name} serving {_serving(desired)}")
        current = k8s.get_custom(KIND, resource.namespace, name)
    elif needs_update(current, desired):
        if k8s.replace_custom(updated(current, desired)):
            kopf.info(body, reason="RollingOut", message=f"InferenceService {name} now serves {_serving(desired)}")
        current = k8s.get_custom(KIND, resource.namespace, name)
    observed = observe(current, models, mode=resource.spec.deployment_mode)
    if current is not None and needs_update(current, desired):
        observed = Observed(Execution("Pending", "RollingOut", f"rolling out {_serving(desired)}"), observed.fields)
    _write(info, body, previous, deployment_status(generation=generation, previous=previous, observed=observed,
                                                   models=models, run=run, **drift), patch, "served")


def _drift_report(resource: Resource[Any, Any], version: str | None) -> dict[str, Any] | None:
    """The latest drift report of the deployment's primary model ``version`` in its store (None: none
    yet, monitoring off, or unreadable now)."""
    if not resource.spec.monitoring.enabled:
        return None
    try:
        return read_latest(rayjobs.store_for(resource), resource.namespace, resource.name, version)
    except StoreError as exc:
        log.warning("%s/%s: the drift report cannot be read: %s", resource.namespace, resource.name, exc)
        return None


def _serving(isvc: dict[str, Any]) -> str:
    from earthops.control.reconcile.inferenceservice import served_models

    served = served_models(isvc)
    share = isvc["spec"]["predictor"].get("canaryTrafficPercent")
    return served.primary if not served.canary else f"canary {served.canary} ({share}% of requests) beside {served.primary}"


def _write(info: KindInfo, body: kopf.Body, previous: dict[str, Any], new: dict[str, Any], patch: kopf.Patch,
           result: str) -> None:
    """Patch the status when it changed (fields left out of ``new`` are removed), with an event when the
    phase moves."""
    if new == previous:
        return
    patch.status.update({**dict.fromkeys(set(previous) - set(new)), **new})
    event = drift_event(previous, new)
    if event is not None:  # Warning when drift starts, Normal when it ends
        (kopf.warn if event.type == "Warning" else kopf.info)(body, reason=event.reason, message=event.message)
    if new.get("phase") != previous.get("phase") or new.get("observedGeneration") != previous.get("observedGeneration"):
        phase = new.get("phase")
        reason = (get_condition(new.get("conditions") or [], "Ready") or {}).get("reason") or str(phase)
        (kopf.warn if phase == "Failed" else kopf.info)(body, reason=reason, message=new.get("message", ""))
        RECONCILES.labels(info.kind, result if phase != "Ready" else "ready").inc()


def register(info: KindInfo) -> None:
    @kopf.on.resume(GROUP, VERSION, info.plural)
    @kopf.on.create(GROUP, VERSION, info.plural)
    @kopf.on.update(GROUP, VERSION, info.plural, field="spec")
    def serve(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, **_: Any) -> None:
        reconcile(info, body, meta, status, patch)

    @kopf.timer(GROUP, VERSION, info.plural, interval=3.0, initial_delay=1.0, sharp=False)
    def follow_serving(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, **_: Any) -> None:
        reconcile(info, body, meta, status, patch)


def register_all() -> list[str]:
    kinds = [info for info in KINDS.values() if serves(info.kind)]
    for info in kinds:
        register(info)
    return [info.kind for info in kinds]
