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
    """Autoscaling bounds and signal (KServe's `minReplicas`, `maxReplicas`, `scaleMetric`, `scaleTarget`)."""

    cel_rules = (
        Rule("self.min <= self.max", "replicas.min must be <= replicas.max", ".min"),
        Rule("!has(self.metric) || !(self.metric in ['cpu', 'memory']) || !has(self.target) || self.target <= 100",
             "replicas.target is a percent of the requested cpu or memory for those metrics: at most 100", ".target"),
    )

    min: Annotated[int, Field(ge=0, le=1000)] = 1
    """Fewest replicas; 0 allows scale to zero (deploymentMode Knative with metric concurrency or rps)."""
    max: Annotated[int, Field(ge=1, le=1000)] = 1
    """Most replicas."""
    metric: Literal["concurrency", "rps", "cpu", "memory"] | None = None
    """What the autoscaler follows: `cpu` or `memory` (percent of the request; the HorizontalPodAutoscaler,
    both modes) or `concurrency` or `rps` (in-flight requests, requests per second; Knative's autoscaler,
    deploymentMode Knative only). Default: the mode's own (Standard: cpu at 80 percent; Knative: concurrency)."""
    target: Annotated[int, Field(ge=1, le=100_000)] | None = None
    """Target value of the metric per replica (requests, requests/s, or percent). Default: the autoscaler's."""


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
    """EODataset whose training split's statistics are the reference, per band (default: the served model
    version's copy of its training dataset's `stats.json`)."""
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.2
    """Population stability index above which a band (or the predicted class shares) drifts; the status
    shows the worst."""
    window: Annotated[int, Field(ge=10, le=1_000_000)] = 500
    """Requests per drift window (a window with fewer than 30 chips reports insufficient data, no score)."""
    interval: Duration = "5m"
    """A window also closes after this long, whichever comes first."""
    payload_logging: bool = False
    """Also keep a sample of the requests (5% of the chips, at most 500 per window, values up to 256 KiB a
    chip) and the model's answers in the store, as Parquet beside the drift reports."""


#: KServe's deployment modes (the ``serving.kserve.io/deploymentMode`` annotation, KServe 0.16 and later):
#: Standard is a Deployment, a Service and a HorizontalPodAutoscaler (no Knative needed, KServe's own
#: default); Knative is a Knative Service, whose revisions carry the canary traffic split and can scale to zero.
DeploymentMode = Literal["Standard", "Knative"]


class ModelDeploymentSpec(ApiModel):
    """Serve a model, optionally with a canary."""

    cel_rules = (
        # compared field by field: the two references are distinct schema types to the API server's CEL
        Rule("!has(self.canary) || " + _ref_text("self.canary.modelRef") + " != " + _ref_text("self.modelRef"),
             "canary.modelRef must differ from modelRef", ".canary.modelRef"),
        Rule("!has(self.canary) || self.deploymentMode == 'Knative'",
             "a canary needs deploymentMode Knative: KServe splits traffic between revisions only with Knative "
             "(Standard mode serves one model)", ".canary"),
        Rule("self.replicas.min > 0 || self.deploymentMode == 'Knative'",
             "replicas.min 0 (scale to zero) needs deploymentMode Knative; Standard mode keeps at least 1 replica",
             ".replicas.min"),
        Rule("self.deploymentMode == 'Knative' || !has(self.replicas.metric) || self.replicas.metric in ['cpu', 'memory']",
             "replicas.metric concurrency and rps need deploymentMode Knative; Standard mode's "
             "HorizontalPodAutoscaler follows cpu or memory", ".replicas.metric"),
        Rule("self.replicas.min > 0 || !has(self.replicas.metric) || self.replicas.metric in ['concurrency', 'rps']",
             "replicas.min 0 (scale to zero) needs metric concurrency or rps: the HorizontalPodAutoscaler that "
             "follows cpu and memory never scales to zero", ".replicas.min"),
    )

    model_ref: ModelRef
    """The model to serve."""
    deployment_mode: DeploymentMode = "Standard"
    """KServe deployment mode. `Standard` (the default; needs no Knative): a Deployment with a
    HorizontalPodAutoscaler on cpu or memory, at least one replica, one model (no canary). `Knative`:
    Knative revisions, which a canary needs (its traffic split) and scale to zero (`replicas.min: 0`),
    autoscaling on concurrency or requests per second too."""
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


class TrafficShare(ApiModel):
    """Who gets which share of the requests."""

    version: str
    """The model version (`<model>/<version>`)."""
    percent: Annotated[int, Field(ge=0, le=100)]
    """Share of the requests, in percent."""
    role: Literal["primary", "canary"]
    """Whether it is the served model or the canary."""


class ModelDeploymentStatus(CommonStatus):
    """Observed state of a ModelDeployment."""

    url: str | None = None
    """Where the model answers (KServe protocols under it: `/v1/models/<name>:predict`, `/v2/models/<name>/infer`)."""
    model_name: str | None = None
    """The name the model is served under (the `<name>` in the protocol paths)."""
    model_version: str | None = None
    """The resolved model version being served (`<model>/<version>`)."""
    model_uri: str | None = None
    """Where that version is in the store."""
    canary_version: str | None = None
    """The resolved canary version (`<model>/<version>`)."""
    canary_model_uri: str | None = None
    """Where the canary version is in the store."""
    canary_traffic_percent: Annotated[int, Field(ge=0, le=100)] | None = None
    """Traffic share the canary gets now."""
    traffic: list[TrafficShare] | None = None
    """The traffic split now, as the serving layer reports it."""
    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    """Replicas ready to serve."""
    drift: Drift | None = None
    """Latest drift check."""
    inference_service_name: str | None = None
    """The KServe InferenceService serving it (cluster mode)."""
