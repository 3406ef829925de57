"""A ModelDeployment -> the KServe InferenceService that serves it, and its status back (pure).

The InferenceService (``serving.kserve.io/v1beta1``) has one custom predictor container running
``python -m earthops_runtime.serving`` — the very command ``earthops serve`` and ``earthops run -f``
run locally — on the model version that ``spec.modelRef`` resolves to (:func:`resolve_models`).
It is owned by the ModelDeployment, so deleting the deployment deletes it (garbage collection).

Canary (KServe's canary rollout, Knative mode only): the canary model becomes the predictor's latest
revision and gets ``canaryTrafficPercent``; the previously rolled-out revision — the primary model —
keeps the rest; 100 promotes the canary; removing ``spec.canary`` rolls the primary out again. KServe
splits between the latest revision and the previous *rolled-out* one, so a canary is only ever put
in the spec once the primary alone has been rolled out and is Ready (:func:`stage`): a deployment
created with a canary first rolls out its primary, then the canary.

Which models an InferenceService's spec serves is written in its annotations (``earthops.dev/...``),
so the status is derived from the InferenceService alone (:func:`observe`), with the one status
derivation every kind uses (:func:`earthops.control.status.derive`) in :func:`deployment_status`.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from earthops.api import KINDS, Resource
from earthops.api.common import ModelRef
from earthops.api.runtime import RuntimeStatus
from earthops.control.reconcile.drift import monitoring_arguments, with_drift
from earthops.control.reconcile.inputs import Lookup, resolve_inputs
from earthops.control.reconcile.rayjob import (
    SCRATCH_ENV,
    SCRATCH_MOUNT,
    SCRATCH_VOLUME,
    container_security_context,
    labels,
    owner_reference,
    pod_security_context,
)
from earthops.control.status import Blocker, Execution, Met, derive
from earthops.core.registry import resolve_version, store_of, version_key
from earthops.core.store import Store

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
API_VERSION = f"{GROUP}/{VERSION}"
#: KServe's annotation choosing the deployment mode (values ``Standard``, ``Knative``; KServe 0.16 and later).
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
#: Knative's autoscaler class: cpu and memory are followed by the HorizontalPodAutoscaler class, not Knative's own.
KNATIVE_CLASS_ANNOTATION = "autoscaling.knative.dev/class"
KNATIVE_HPA_CLASS = "hpa.autoscaling.knative.dev"
#: What the InferenceService's spec serves (read back by :func:`observe`).
PRIMARY_ANNOTATION = "earthops.dev/model-version"
CANARY_ANNOTATION = "earthops.dev/canary-version"
GENERATION_ANNOTATION = "earthops.dev/generation"
#: The models resolved for that generation (JSON): a ``latest`` or a TuningExperiment's best stays what it
#: was when the generation was first served, until the spec changes.
RESOLVED_ANNOTATION = "earthops.dev/resolved-models"
#: The predictor module, run as ``python -m`` (``KINDS["ModelDeployment"].runtime``).
PREDICTOR_MODULE = KINDS["ModelDeployment"].runtime or "earthops_runtime.serving"
#: KServe's container name for a custom predictor, and the ports it expects the server on.
CONTAINER = "kserve-container"
HTTP_PORT = 8080
GRPC_PORT = 8081


# --- the models it serves ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    """A registered model version: its registry name, version and where it is in the store."""

    name: str
    version: str
    uri: str

    @property
    def label(self) -> str:
        """``<model>/<version>``, as the status shows it."""
        return f"{self.name}/{self.version}"


#: (model, version or ``latest``) -> (version, URI of the version's folder); raises LookupError
#: (:class:`earthops.core.registry.RegistryError`) naming what exists.
Registry = Callable[[str, str], tuple[str, str]]


def store_registry(store: Store, namespace: str) -> Registry:
    """The :data:`Registry` of the models registered in ``store`` under ``namespace`` (the deployment's
    store: the operator's handler and the embedded executor both resolve through it)."""

    def resolve(model: str, version: str) -> tuple[str, str]:
        found = resolve_version(store, namespace, model, version)
        return found, store.url(version_key(namespace, model, found))

    return resolve


@dataclass(frozen=True)
class Models:
    """The resolved models of a deployment, or what it still waits for."""

    primary: ServedModel | None = None
    canary: ServedModel | None = None
    blockers: tuple[Blocker, ...] = ()
    met: tuple[Met, ...] = ()
    #: The drift reference: ``monitoring.referenceDatasetRef``'s published run (None: the served version's own).
    reference: str | None = None

    @property
    def ready(self) -> bool:
        return not self.blockers and self.primary is not None


def resolve_models(resource: Resource[Any, Any], lookup: Lookup, registry: Registry, *, wait: bool) -> Models:
    """Resolve ``spec.modelRef`` (and ``spec.canary.modelRef``) to registered model versions.

    A registry reference (``model``, ``version`` or the newest) is looked up in the registry; a
    TuningExperiment reference is its ``status.registeredModel`` once it has Succeeded — until then
    the deployment waits (``TuningExperimentReady=False``, reason ``TuningExperimentNotReady``), and a
    failed experiment fails it. ``wait``: the caller tries again later (the operator), so what is
    missing holds the deployment Pending; otherwise (embedded) it fails it."""
    spec = resource.spec
    references = resolve_inputs(resource, lookup, wait=wait)  # tuning experiments and the drift reference dataset
    blockers, met = list(references.blockers), list(references.met)
    resolved: dict[str, ServedModel] = {}
    for key, condition, ref in (("model", "ModelReady", spec.model_ref),
                                ("canaryModel", "CanaryModelReady", spec.canary.model_ref if spec.canary else None)):
        if ref is None:
            continue
        if ref.tuning_experiment and key not in references.inputs:
            continue  # the experiment is not usable yet: its blocker says so
        try:
            model = _resolve_one(ref, lookup, registry)
        except LookupError as exc:
            blockers.append(Blocker(condition, "ModelNotFound", f"{_ref_text(ref)}: {exc.args[0] if exc.args else exc}"
                                    + ("; waiting for it" if wait else ""), failed=not wait))
            continue
        resolved[key] = model
        met.append(Met(condition, f"{_ref_text(ref)} is {model.label} ({model.uri})"))
    return Models(resolved.get("model"), resolved.get("canaryModel"), tuple(blockers), tuple(met),
                  references.inputs.get("referenceDataset"))


def pinned_models(isvc: Mapping[str, Any] | None, generation: int) -> Models | None:
    """The models resolved for ``generation`` when its InferenceService was made, or None (another
    generation's, or none): they are not looked up again while the spec stays the same."""
    annotations = ((isvc or {}).get("metadata") or {}).get("annotations") or {}
    if annotations.get(GENERATION_ANNOTATION) != str(generation) or RESOLVED_ANNOTATION not in annotations:
        return None
    try:
        doc = json.loads(annotations[RESOLVED_ANNOTATION])
        return Models(ServedModel(**doc["model"]), ServedModel(**doc["canaryModel"]) if doc.get("canaryModel") else None,
                      reference=doc.get("reference"))
    except (ValueError, TypeError, KeyError):
        return None  # written by someone else: resolve again


def _ref_text(ref: ModelRef) -> str:
    if ref.tuning_experiment:
        return f"the best model of TuningExperiment {ref.tuning_experiment!r}"
    return f"model {ref.model!r} version {ref.version or 'latest'}"


def _resolve_one(ref: ModelRef, lookup: Lookup, registry: Registry) -> ServedModel:
    if ref.tuning_experiment:
        status = lookup("TuningExperiment", ref.tuning_experiment) or {}
        registered = status.get("registeredModel") or {}
        if not registered.get("name") or not registered.get("version"):
            raise LookupError("it has Succeeded but registered no model (status.registeredModel is empty)")
        if registered.get("uri"):
            return ServedModel(registered["name"], registered["version"], str(registered["uri"]))
        version, uri = registry(registered["name"], registered["version"])
        return ServedModel(registered["name"], version, uri)
    assert ref.model is not None  # the contract: exactly one of model and tuningExperiment
    version, uri = registry(ref.model, ref.version or "latest")
    return ServedModel(ref.model, version, uri)


# --- the InferenceService -------------------------------------------------------------------------------


def predictor_command(resource: Resource[Any, Any], model: ServedModel, *, http_port: int = HTTP_PORT,
                      canary: ServedModel | None = None, canary_percent: int | None = None,
                      reference: str | None = None) -> list[str]:
    """``python -m earthops_runtime.serving ...``: the one predictor command, in a pod and locally.

    ``canary``/``canary_percent``: the predictor splits requests itself (embedded mode; on a cluster
    KServe's revisions split them and each revision serves one model).

    Scenes sent by URI must lie in the deployment's store (``--scene-uri-prefix``): the predictor
    holds the store's credentials, and a client must not make it read whatever else they reach."""
    spec = resource.spec
    argv = ["python", "-m", PREDICTOR_MODULE, "--model-uri", model.uri, "--model-name", resource.name,
            "--http_port", str(http_port), "--scene-uri-prefix", store_of(model.uri).rstrip("/") + "/"]
    if spec.protocol == "grpc-v2":  # gRPC v2 beside REST, on the next port (8081 in a pod, as KServe expects)
        argv += ["--grpc_port", str(http_port + 1 if http_port not in (0, HTTP_PORT) else GRPC_PORT)]
    if canary is not None:
        argv += ["--canary-model-uri", canary.uri, "--canary-percent", str(canary_percent or 0)]
    return argv + monitoring_arguments(resource, model.uri, reference)  # drift reports (reference: see Models)


Stage = Literal["primary", "canary"]


def stage(resource: Resource[Any, Any], models: Models, current: Mapping[str, Any] | None) -> Stage:
    """What the InferenceService's spec serves now: the primary alone, or the canary as the latest revision.

    The canary goes in only once the primary has been rolled out alone, Ready at its spec's generation
    (KServe gives the canary's share to the latest revision and the rest to the previous *rolled-out*
    one); once there, it stays while the primary is the same."""
    if resource.spec.canary is None or models.canary is None or models.primary is None:
        return "primary"
    if current is None:
        return "primary"
    served = served_models(current)
    if served.primary != models.primary.label:
        return "primary"
    if served.canary is not None:
        return "canary"  # the primary was rolled out before the canary went in
    return "canary" if _ready_at_generation(current) else "primary"


def desired_inference_service(resource: Resource[Any, Any], models: Models, *, image: str, generation: int,
                              current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The InferenceService that serves ``resource`` (its models resolved, see :func:`resolve_models`).

    ``current``: the InferenceService as it is now (None when there is none), which decides whether the
    canary goes in yet (:func:`stage`)."""
    if models.primary is None:
        raise ValueError(f"ModelDeployment {resource.namespace}/{resource.name}: its model is not resolved")
    spec = resource.spec
    serving = stage(resource, models, current)
    model = models.canary if serving == "canary" and models.canary else models.primary
    limits: dict[str, str] = {"cpu": str(spec.resources.cpu), "memory": str(spec.resources.memory)}
    if spec.resources.gpu:
        limits["nvidia.com/gpu"] = str(spec.resources.gpu)
    storage = spec.storage
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": predictor_command(resource, model, reference=models.reference),
        "resources": {"requests": dict(limits), "limits": limits},
        # a read-only root filesystem: /tmp is the one writable folder (caches moved there)
        "env": list(SCRATCH_ENV),
        "volumeMounts": [dict(SCRATCH_MOUNT)],
        "securityContext": container_security_context(),
    }
    # a custom predictor declares the one port KServe routes to (Knative allows one): h2c for gRPC
    container["ports"] = ([{"name": "h2c", "containerPort": GRPC_PORT, "protocol": "TCP"}] if spec.protocol == "grpc-v2"
                          else [{"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}])
    if storage.secret_ref:
        # the Secret's AWS_* keys as environment variables: credentials never in the spec
        container["envFrom"] = [{"secretRef": {"name": storage.secret_ref.name}}]
    predictor: dict[str, Any] = {
        "minReplicas": spec.replicas.min,
        "maxReplicas": spec.replicas.max,
        "containers": [container],
        "volumes": [dict(SCRATCH_VOLUME)],
        "securityContext": pod_security_context(),
    }
    if spec.replicas.metric:
        predictor["scaleMetric"] = spec.replicas.metric
    if spec.replicas.target is not None:
        predictor["scaleTarget"] = spec.replicas.target
    if serving == "canary" and spec.canary is not None:
        predictor["canaryTrafficPercent"] = spec.canary.traffic_percent
    resolved = {"model": vars(models.primary), **({"canaryModel": vars(models.canary)} if models.canary else {}),
                **({"reference": models.reference} if models.reference else {})}  # pinned with the models
    annotations = {MODE_ANNOTATION: spec.deployment_mode, PRIMARY_ANNOTATION: models.primary.label,
                   GENERATION_ANNOTATION: str(generation), RESOLVED_ANNOTATION: json.dumps(resolved, sort_keys=True)}
    if serving == "canary" and models.canary is not None:
        annotations[CANARY_ANNOTATION] = models.canary.label
    if spec.deployment_mode == "Knative" and spec.replicas.metric in ("cpu", "memory"):
        annotations[KNATIVE_CLASS_ANNOTATION] = KNATIVE_HPA_CLASS
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {"name": inference_service_name(resource), "namespace": resource.namespace,
                     "labels": labels(resource, f"g{generation}"), "annotations": annotations,
                     "ownerReferences": [owner_reference(resource)]},
        "spec": {"predictor": predictor},
    }


#: KServe's InferenceService names are DNS-1035 labels (they become Service and host names).
_ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def inference_service_name(resource: Resource[Any, Any]) -> str:
    """The deployment's name: clients reach ``<name>-<namespace>.<domain>`` (Knative) or ``<name>-predictor``.

    A ModelDeployment name that KServe cannot take (a DNS-1035 label: lower-case letters, digits and
    '-', starting with a letter, at most 63 characters; no dots) is refused here, naming it."""
    name = resource.name
    if len(name) > 63 or not _ISVC_NAME.match(name):
        raise ValueError(f"metadata.name {name!r}: a ModelDeployment's InferenceService takes its name, and KServe "
                         "accepts DNS-1035 labels only: lower-case letters, digits and '-', starting with a letter, "
                         "at most 63 characters (no dots)")
    return name


#: Predictor fields earthops sets or leaves out on purpose: one that is there and should not be (a canary
#: share after a rollback; KServe's CloudEvents ``logger``, which earthops no longer sets: payload logging is
#: the predictor's own sampled, size-bounded log, ``--payload-logging``) is an update too. Others KServe's
#: webhook may default; they are left to it.
OWNED_PREDICTOR_FIELDS = ("minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "canaryTrafficPercent", "logger")


def _contains(have: Any, want: Any) -> bool:
    """Whether ``have`` holds everything ``want`` says (defaults others added are allowed)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and _contains(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(map(_contains, have, want))
    return bool(have == want)


def needs_update(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether the InferenceService differs from ``desired`` in what earthops decides: the spec it wrote
    (fields KServe's webhook defaulted are not a difference), the predictor fields it owns, and the
    annotations that say what it serves."""
    have_predictor = ((current.get("spec") or {}).get("predictor")) or {}
    want_predictor = desired["spec"]["predictor"]
    have = dict((current.get("metadata") or {}).get("annotations") or {})
    want = desired["metadata"]["annotations"]
    return (not _contains(current.get("spec"), desired["spec"])
            or any((f in have_predictor) != (f in want_predictor) for f in OWNED_PREDICTOR_FIELDS)
            or any(have.get(k) != v for k, v in want.items())
            or (CANARY_ANNOTATION in have) != (CANARY_ANNOTATION in want))


def updated(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """``current`` with ``desired``'s spec, labels and annotations (a full replace at its resourceVersion):
    others' labels and annotations stay, earthops' own say what is served now."""
    meta = dict(current["metadata"])
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != CANARY_ANNOTATION}
    meta["annotations"] = {**annotations, **desired["metadata"]["annotations"]}
    meta["labels"] = {**(meta.get("labels") or {}), **desired["metadata"]["labels"]}
    meta["ownerReferences"] = desired["metadata"]["ownerReferences"]
    return copy.deepcopy({**current, "metadata": meta, "spec": desired["spec"]})


# --- its status back ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """Which models an InferenceService's spec serves (from its annotations)."""

    primary: str | None
    canary: str | None


def served_models(isvc: Mapping[str, Any]) -> Served:
    annotations = (isvc.get("metadata") or {}).get("annotations") or {}
    return Served(annotations.get(PRIMARY_ANNOTATION), annotations.get(CANARY_ANNOTATION))


def _condition(isvc: Mapping[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (isvc.get("status") or {}).get("conditions") or [] if c.get("type") == type_), {})


def _ready_at_generation(isvc: Mapping[str, Any]) -> bool:
    status = isvc.get("status") or {}
    generation = (isvc.get("metadata") or {}).get("generation")
    return _condition(isvc, "Ready").get("status") == "True" and status.get("observedGeneration") == generation


#: KServe's model states that mean the model will not load as it is (modelStatus.transitionStatus).
FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")


@dataclass(frozen=True)
class Observed:
    """What the status derivation needs from the serving layer (an InferenceService, or the local server)."""

    execution: Execution
    #: ModelDeploymentStatus fields (camelCase): url, modelVersion, canaryVersion, traffic, readyReplicas, ...
    fields: dict[str, Any] = field(default_factory=dict)


def observe(isvc: Mapping[str, Any] | None, models: Models, *, mode: str) -> Observed:
    """An InferenceService (None: not there yet) -> the deployment's execution state and status fields.

    Ready at the generation its spec has: the deployment is Ready. Knative marks a revision that cannot
    become ready ``Ready=False`` (in progress is ``Unknown``); in Standard mode ``Ready=False`` is also how
    a starting Deployment looks, so only a model that failed to load (``modelStatus``) fails it there."""
    if isvc is None:
        return Observed(Execution("Pending", "InferenceServiceCreating", "creating the InferenceService"))
    status = isvc.get("status") or {}
    served = served_models(isvc)
    ready = _condition(isvc, "Ready")
    model_status = status.get("modelStatus") or {}
    uri = models.canary.uri if served.canary and models.canary else (models.primary.uri if models.primary else "")
    failure = (model_status.get("lastFailureInfo") or {}).get("message") or ready.get("message") or ""
    fields = _fields(isvc, served, models)
    if model_status.get("transitionStatus") in FAILED_TRANSITIONS or (mode == "Knative" and ready.get("status") == "False"):
        reason = (model_status.get("lastFailureInfo") or {}).get("reason") or ready.get("reason") or "PredictorFailed"
        return Observed(Execution("Failed", reason, f"the predictor of model {uri} did not become ready: "
                                  f"{failure or 'no message from KServe'}"), fields)
    if _ready_at_generation(isvc):
        what = served.primary if not served.canary else f"{served.primary} and canary {served.canary}"
        return Observed(Execution("Succeeded", "", f"serving {what} at {status.get('url') or '(no URL yet)'}"), fields)
    message = ready.get("message") or f"rolling out {served.canary or served.primary}"
    return Observed(Execution("Pending", "RollingOut", message), fields)


def _fields(isvc: Mapping[str, Any], served: Served, models: Models) -> dict[str, Any]:
    status = isvc.get("status") or {}
    predictor = (status.get("components") or {}).get("predictor") or {}
    name = (isvc.get("metadata") or {}).get("name")
    fields: dict[str, Any] = {"inferenceServiceName": name, "modelName": name}
    if status.get("url"):
        fields["url"] = status["url"]
    copies = (status.get("modelStatus") or {}).get("copies") or {}
    if _condition(isvc, "Ready").get("status") == "True":
        fields["readyReplicas"] = int(copies.get("totalCopies") or 1) - int(copies.get("failedCopies") or 0)
    else:
        fields["readyReplicas"] = 0
    if served.primary:
        fields["modelVersion"] = served.primary
        if models.primary and models.primary.label == served.primary:
            fields["modelUri"] = models.primary.uri
    if served.canary:
        fields["canaryVersion"] = served.canary
        if models.canary and models.canary.label == served.canary:
            fields["canaryModelUri"] = models.canary.uri
    traffic = _traffic(predictor.get("traffic") or [], served)
    if traffic:
        fields["traffic"] = traffic
        fields["canaryTrafficPercent"] = next((t["percent"] for t in traffic if t["role"] == "canary"), 0) \
            if served.canary else None
    if fields.get("canaryTrafficPercent") is None:
        fields.pop("canaryTrafficPercent", None)
    return fields


def _traffic(targets: list[Mapping[str, Any]], served: Served) -> list[dict[str, Any]]:
    """Knative's traffic targets -> shares by model version: the latest revision serves the spec's model
    (the canary while there is one), the others the previously rolled-out primary."""
    shares: dict[tuple[str, str], int] = {}
    for t in targets:
        latest = bool(t.get("latestRevision"))
        if served.canary:
            role, version = ("canary", served.canary) if latest else ("primary", served.primary or "")
        else:
            role, version = "primary", served.primary or ""
        shares[(role, version)] = shares.get((role, version), 0) + int(t.get("percent") or 0)
    return [{"version": v, "percent": p, "role": r} for (r, v), p in sorted(shares.items(), key=lambda x: x[0][0] != "primary")]


def deployment_status(*, generation: int | None, previous: Mapping[str, Any] | None, observed: Observed,
                      models: Models, run: str, at: datetime | None = None,
                      monitored: bool | None = None, drift_report: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ModelDeployment's status (wire format): the one derivation of every kind
    (:func:`earthops.control.status.derive`), fed with what the serving layer reports.

    The one place a ModelDeployment's status is made, by the operator (from the InferenceService) and
    the embedded executor (from its local server) alike; more kinds of observation (drift) add their
    fields and conditions here."""
    ex = observed.execution
    # the serving layer's report, checked against the status schema like a runtime's status.json
    runtime = RuntimeStatus(phase=ex.state, run_id=run, generation=generation, reason=ex.reason, message=ex.message,
                            results=observed.fields, updated_at=at or datetime.now(UTC))
    status = derive(KINDS["ModelDeployment"], generation=generation, previous=previous, execution=ex, runtime=runtime,
                    blockers=models.blockers, met=models.met, at=at)
    # drift (``monitored``: spec.monitoring.enabled; None keeps what the status said): the latest report,
    # read from the store by the caller, as status.drift and the Drift condition
    return with_drift(status, previous, drift_report, enabled=monitored, generation=generation, at=at)
