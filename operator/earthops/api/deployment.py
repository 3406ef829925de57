"""ModelDeployment: serve a registered model through KServe, scale, canary, watch for drift."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from earthops.api.base import ApiModel, Rule
from earthops.api.common import CommonStatus, Duration, LocalRef, ModelRef, Quantity, Storage


def _ref_text(ref: str) -> str:
    """CEL text of a ModelRef as one string (``model/version/tuningExperiment``)."""
    return " + '/' + ".join(f"(has({ref}.{f}) ? {ref}.{f} : '')" for f in ("model", "version", "tuningExperiment"))


class Canary(ApiModel):
    """A new model version that gets a share of the traffic."""

    model_ref: ModelRef
    """The canary model."""
    traffic_percent: Annotated[int, Field(ge=0, le=100)]
    """Share of requests sent to the canary (0-100); 100 promotes it."""


class Replicas(ApiModel):
    """Autoscaling bounds and signal."""

    cel_rules = (Rule("self.min <= self.max", "replicas.min must be <= replicas.max", ".min"),)

    min: Annotated[int, Field(ge=0, le=1000)] = 1
    """Fewest replicas; 0 allows scale to zero."""
    max: Annotated[int, Field(ge=1, le=1000)] = 1
    """Most replicas."""
    metric: Literal["concurrency", "rps", "cpu", "memory"] = "concurrency"
    """What the autoscaler follows."""
    target: Annotated[int, Field(ge=1, le=100_000)] = 10
    """Target value of the metric per replica (requests, requests/s, or percent)."""


class ServingResources(ApiModel):
    """Resources of one model server replica."""

    cpu: Quantity = 1
    """CPU request and limit."""
    memory: Quantity = "2Gi"
    """Memory request and limit."""
    gpu: Annotated[int, Field(ge=0, le=16)] = 0
    """GPUs (`nvidia.com/gpu`)."""


class Monitoring(ApiModel):
    """Drift monitoring of incoming data against the training data."""

    enabled: bool = True
    """Watch incoming data for drift."""
    reference_dataset_ref: LocalRef | None = None
    """EODataset whose training statistics are the reference (default: the model's training dataset)."""
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.2
    """Drift score (population stability per band, worst band) above which drift is reported."""
    window: Annotated[int, Field(ge=10, le=1_000_000)] = 500
    """Requests per drift window."""
    interval: Duration = "5m"
    """How often drift is computed."""
    payload_logging: bool = False
    """Also keep the request payloads in the store."""


class ModelDeploymentSpec(ApiModel):
    """Serve a model, optionally with a canary."""

    cel_rules = (
        # compared field by field: the two references are distinct schema types to the API server's CEL
        Rule("!has(self.canary) || " + _ref_text("self.canary.modelRef") + " != " + _ref_text("self.modelRef"),
             "canary.modelRef must differ from modelRef", ".canary.modelRef"),
    )

    model_ref: ModelRef
    """The model to serve."""
    canary: Canary | None = None
    """A canary model and its traffic share."""
    replicas: Replicas = Field(default_factory=Replicas)
    """Autoscaling."""
    resources: ServingResources = Field(default_factory=ServingResources)
    """Resources per replica."""
    protocol: Literal["v1", "v2", "grpc-v2"] = "v2"
    """Inference protocol (KServe v1, Open Inference Protocol v2 over REST, or v2 over gRPC)."""
    monitoring: Monitoring = Field(default_factory=Monitoring)
    """Drift monitoring."""
    storage: Storage = Field(default_factory=Storage)
    """Store with the model registry and the monitoring reports."""


class Drift(ApiModel):
    """Latest drift check."""

    detected: bool = False
    """Whether the score is above the threshold."""
    score: Annotated[float, Field(ge=0)] = 0.0
    """Worst per-band drift score."""
    band: str | None = None
    """The band with the worst score."""


class ModelDeploymentStatus(CommonStatus):
    """Observed state of a ModelDeployment."""

    url: str | None = None
    """Where the model answers."""
    model_version: str | None = None
    """The resolved model version being served."""
    canary_version: str | None = None
    """The resolved canary version."""
    canary_traffic_percent: Annotated[int, Field(ge=0, le=100)] | None = None
    """Traffic share the canary gets now."""
    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    """Replicas ready to serve."""
    drift: Drift | None = None
    """Latest drift check."""
    inference_service_name: str | None = None
    """The KServe InferenceService serving it (cluster mode)."""
