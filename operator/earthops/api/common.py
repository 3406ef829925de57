"""Types shared by the four kinds: references, resources, Ray cluster shape, storage, status."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from earthops.api.base import ApiModel, Rule, keyed_list

# --- scalar types -----------------------------------------------------------------------------------

#: A DNS-1123 subdomain name (what Kubernetes accepts for a resource name).
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
]
#: A DNS-1123 label (what Kubernetes accepts for a namespace, a label value-like name).
Label = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def check_qualified_name(key: str, what: str, *, case_sensitive: bool = True) -> str:
    """A label or annotation key as Kubernetes accepts it: ``[prefix/]name``, the prefix a DNS
    subdomain of at most 253 characters, the name at most 63 alphanumerics, '-', '_' or '.' that
    begin and end alphanumeric. Kubernetes checks an annotation key in lowercase
    (``case_sensitive=False``): its prefix may have capitals."""
    prefix, slash, name = (key if case_sensitive else key.lower()).rpartition("/")
    problem = None
    if slash and not (prefix and len(prefix) <= 253 and _DNS_SUBDOMAIN.match(prefix)):
        problem = "its prefix (before '/') must be a DNS subdomain (lowercase, e.g. example.com)"
    elif not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        problem = ("its name must be 1-63 letters, digits, '-', '_' or '.', beginning and ending with a letter "
                   "or digit, with an optional DNS subdomain prefix and '/'")
    if problem:
        raise PydanticCustomError("qualified_name", "{what} '{key}' is invalid: {problem}",
                                  {"what": what, "key": key, "problem": problem})
    return key


def check_label_value(key: str, value: str) -> str:
    """A label value as Kubernetes accepts it: empty, or at most 63 letters, digits, '-', '_' or '.'
    beginning and ending with a letter or digit."""
    if value and (len(value) > 63 or not _QUALIFIED_NAME.match(value)):
        raise PydanticCustomError(
            "label_value", "label '{key}': value '{value}' is invalid: at most 63 letters, digits, '-', '_' or '.', "
            "beginning and ending with a letter or digit (or empty)", {"key": key, "value": value})
    return value


# A Kubernetes quantity, as Kubernetes writes its pattern in CRDs, but positive: no sign but '+', and
# a nonzero digit in the number (a pod shape or a reservation of 0 or less is nonsense).
_QUANTITY = (r"^\+?(([0-9]*[1-9][0-9]*(\.[0-9]*)?)|([0-9]*\.[0-9]*[1-9][0-9]*))"
             r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
_QUANTITY_RE = re.compile(_QUANTITY)
_QUANTITY_ACCEPTED = "a positive Kubernetes quantity: a positive integer, or text such as 500m, 2, 1.5, 4Gi or 512Mi"


def _positive_int(value: int) -> int:
    if value < 1:
        raise PydanticCustomError("quantity", "{value} is not " + _QUANTITY_ACCEPTED, {"value": value})
    return value


def _quantity_text(value: str) -> str:
    if not _QUANTITY_RE.match(value):
        raise PydanticCustomError("quantity", "'{value}' is not " + _QUANTITY_ACCEPTED, {"value": value})
    return value


#: A positive Kubernetes resource quantity (`2Gi`, `500m`, `4`): a positive integer or a quantity text.
Quantity = Annotated[
    Annotated[int, AfterValidator(_positive_int)] | Annotated[str, AfterValidator(_quantity_text)],
    WithJsonSchema(
        {"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": _QUANTITY, "minimum": 1,
         "x-kubernetes-int-or-string": True}
    ),
]
_DURATION_TEXT = r"[0-9]+(\.[0-9]+)?(ms|s|m|h)"
#: A positive duration such as `90s`, `30m`, `2h` or `1h30m` (one of its parts is not zero).
Duration = Annotated[str, StringConstraints(
    pattern=rf"^({_DURATION_TEXT})*([0-9]*[1-9][0-9]*(\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)(ms|s|m|h)({_DURATION_TEXT})*$")]

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_QUANTITY_PARTS = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([KMGTPE]i|[numkMGTPE])?$")
_QUANTITY_SUFFIX = {None: 1.0, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
                    "E": 1e18, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60}


def duration_seconds(text: str | None) -> float | None:
    """A :data:`Duration` (`2h`, `1h30m`, `90s`, `500ms`) in seconds; None stays None."""
    if not text:
        return None
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))


def quantity_value(value: int | float | str | None) -> float | None:
    """A :data:`Quantity` (`4Gi`, `500m`, `2`) as a number; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    m = _QUANTITY_PARTS.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 4Gi, 512Mi, 500m, 2)")
    return float(m.group(1)) * _QUANTITY_SUFFIX[m.group(2)]

# --- references ---------------------------------------------------------------------------------------


class LocalRef(ApiModel):
    """A reference to another earthops resource in the same namespace."""

    name: Name
    """Name of the referenced resource."""


class SecretRef(ApiModel):
    """A reference to a Secret in the resource's namespace."""

    name: Name
    """Name of the Secret."""


class ModelRef(ApiModel):
    """Which model to use: a registered model (optionally a fixed version), or the best model that a
    TuningExperiment registered. Exactly one of `model` and `tuningExperiment`."""

    cel_rules = (
        Rule("has(self.model) != has(self.tuningExperiment)", "set exactly one of model and tuningExperiment"),
        Rule("!has(self.version) || has(self.model)", "version can only be set together with model", ".version"),
    )

    model: Name | None = None
    """Name of a model in the registry (`<store>/models/<namespace>/<model>`)."""
    version: Annotated[str, StringConstraints(pattern=r"^v[0-9]+$")] | None = None
    """Registered version (`v1`, `v2`, ...). Default: the newest version when the resource is created."""
    tuning_experiment: Name | None = None
    """Name of a TuningExperiment in this namespace: its best trial's registered model."""


# --- storage ------------------------------------------------------------------------------------------

_CREDENTIAL_WORDS = ("accesskey", "secretkey", "secret_access", "password", "token", "credential", "sessionkey")


class Storage(ApiModel):
    """Where artifacts go: a store URI and, for S3, the Secret that holds its credentials.

    Credentials never appear in the spec: the Secret has the keys `AWS_ACCESS_KEY_ID`,
    `AWS_SECRET_ACCESS_KEY` and optionally `AWS_ENDPOINT_URL` and `AWS_REGION`."""

    uri: Annotated[str, StringConstraints(pattern=r"^(file:///|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/|$))[^@]*$")] | None = None
    """Store root, `s3://bucket/prefix` or `file:///path`. Default: the operator's store
    (`--store`/`EARTHOPS_STORE`). User info (`key:secret@`) is rejected: use `secretRef`."""
    secret_ref: SecretRef | None = None
    """Secret with the S3 credentials (keys `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional
    `AWS_ENDPOINT_URL`, `AWS_REGION`)."""

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if any(w in str(key).lower().replace("-", "") for w in _CREDENTIAL_WORDS):
                    raise PydanticCustomError(
                        "credentials_in_spec",
                        "field '{key}': credentials are not accepted in the spec; put them in a Secret "
                        "and name it in storage.secretRef",
                        {"key": key},
                    )
        return data


# --- compute --------------------------------------------------------------------------------------------


class TrialResources(ApiModel):
    """Resources for one trial (or one task): Ray resources, also used for the pod requests."""

    cpu: Annotated[float, Field(gt=0, le=1024)] = 1.0
    """CPUs per trial (fractions allowed)."""
    gpu: Annotated[float, Field(ge=0, le=64)] = 0.0
    """GPUs per trial; a fraction (e.g. 0.25) packs several trials on one GPU."""
    memory: Quantity | None = None
    """Memory per trial, as a Kubernetes quantity (`4Gi`). Default: no memory reservation."""


class Toleration(ApiModel):
    """A pod toleration, passed through to the Ray pods."""

    key: str | None = None
    """Taint key; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """How the key and value are matched."""
    value: str | None = None
    """Taint value for operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""


class RayNodeGroup(ApiModel):
    """Pod shape of a Ray head or worker group."""

    cpu: Quantity = 2
    """CPU request and limit per pod."""
    memory: Quantity = "8Gi"
    """Memory request and limit per pod."""
    gpu: Annotated[int, Field(ge=0, le=16)] = 0
    """GPUs per pod (`nvidia.com/gpu` limit)."""


class RayWorkerGroup(RayNodeGroup):
    """A group of identical Ray worker pods."""

    cel_rules = (
        Rule("self.minReplicas <= self.replicas && self.replicas <= self.maxReplicas",
             "worker group replicas must satisfy minReplicas <= replicas <= maxReplicas", ".replicas"),
    )

    name: Label
    """Group name, unique in the cluster."""
    replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    """Worker pods to start with."""
    min_replicas: Annotated[int, Field(ge=0, le=1000)] = 0
    """Lower bound for autoscaling."""
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 1
    """Upper bound for autoscaling."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels this group's pods must run on (e.g. a GPU node pool); added to the cluster-wide ones."""


class RayCompute(ApiModel):
    """Shape of the Ray cluster that KubeRay starts for this resource (ignored in embedded mode, where
    a local Ray runs)."""

    image: str | None = None
    """Ray image with earthops_runtime installed. Default: the operator's runtime image."""
    head: RayNodeGroup = Field(default_factory=RayNodeGroup)
    """The Ray head pod."""
    worker_groups: Annotated[list[RayWorkerGroup], *keyed_list("name")] = Field(
        default_factory=lambda: [RayWorkerGroup(name="workers")], max_length=16
    )
    """Worker groups (for example a CPU group and a GPU group)."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels every Ray pod must run on."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Tolerations for every Ray pod (e.g. for tainted GPU nodes)."""
    service_account_name: Name | None = None
    """Service account of the Ray pods (for cloud IAM). Default: the namespace's default."""


# --- status -----------------------------------------------------------------------------------------------

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Ready"]


class Condition(ApiModel):
    """A Kubernetes-style condition: lastTransitionTime moves only when status changes."""

    type: Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=316)]
    """Condition type (`Ready`, `DatasetReady`, ...)."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)]
    """A CamelCase word, for machines."""
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    """A sentence, for people."""
    last_transition_time: datetime
    """When status last changed."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The resource generation the condition was computed for."""


class Progress(ApiModel):
    """How far the work is, in the runtime's unit (scenes, trials)."""

    done: Annotated[int, Field(ge=0)] = 0
    """Units finished (successfully or not)."""
    total: Annotated[int, Field(ge=0)] | None = None
    """Units in all, when known."""
    unit: str = ""
    """What is counted (`scenes`, `trials`)."""


class CommonStatus(ApiModel):
    """Status fields every kind has."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    phase: Phase = "Pending"
    """Pending, Running, Succeeded or Failed (a ModelDeployment is Ready instead of Succeeded)."""
    conditions: Annotated[list[Condition], *keyed_list("type")] = Field(default_factory=list)
    """Latest observations; `Ready` on every kind."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The generation of the spec this status describes."""
    message: str = ""
    """Human-readable summary of the current phase."""
    progress: str = ""
    """Progress for printing (`3/10 scenes`)."""
    run_id: str | None = None
    """Run identifier in the store (one run per spec generation)."""
    results: str | None = None
    """Where the run's artifacts are in the store (a URI)."""
    start_time: datetime | None = None
    """When the current run started."""
    completion_time: datetime | None = None
    """When the current run finished."""
    ray_job_name: str | None = None
    """The KubeRay RayJob running this resource (cluster mode)."""
