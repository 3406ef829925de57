"""The four kinds as whole resources, and what the CRDs, the CLI and the executors know of each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from earthops.api.ablation import AblationStudySpec, AblationStudyStatus
from earthops.api.base import ApiModel
from earthops.api.common import CommonStatus, Label, Name
from earthops.api.dataset import EODatasetSpec, EODatasetStatus
from earthops.api.deployment import ModelDeploymentSpec, ModelDeploymentStatus
from earthops.api.tuning import TuningExperimentSpec, TuningExperimentStatus

GROUP = "earthops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "earthops"


class ObjectMeta(BaseModel):
    """The parts of Kubernetes object metadata that earthops reads; the rest is kept as it is."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: Name
    namespace: Label = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None


SpecT = TypeVar("SpecT", bound=ApiModel)
StatusT = TypeVar("StatusT", bound=CommonStatus)


class Resource(BaseModel, Generic[SpecT, StatusT]):
    """A whole custom resource: apiVersion, kind, metadata, spec and status."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    api_version: Literal["earthops.dev/v1alpha1"]
    kind: str
    metadata: ObjectMeta
    spec: SpecT
    status: StatusT | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def key(self) -> tuple[str, str, str]:
        """(kind, namespace, name): unique among resources."""
        return (self.kind, self.metadata.namespace, self.metadata.name)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class EODataset(Resource[EODatasetSpec, EODatasetStatus]):
    kind: Literal["EODataset"]


class TuningExperiment(Resource[TuningExperimentSpec, TuningExperimentStatus]):
    kind: Literal["TuningExperiment"]


class AblationStudy(Resource[AblationStudySpec, AblationStudyStatus]):
    kind: Literal["AblationStudy"]


class ModelDeployment(Resource[ModelDeploymentSpec, ModelDeploymentStatus]):
    kind: Literal["ModelDeployment"]


AnyResource = Annotated[EODataset | TuningExperiment | AblationStudy | ModelDeployment, Field(discriminator="kind")]


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0  # 1: only with -o wide

    def to_crd(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


def _refs_dataset(spec: EODatasetSpec) -> dict[str, tuple[str, str]]:
    return {}


def _refs_tuning(spec: TuningExperimentSpec) -> dict[str, tuple[str, str]]:
    return {"dataset": ("EODataset", spec.dataset_ref.name)}


def _refs_ablation(spec: AblationStudySpec) -> dict[str, tuple[str, str]]:
    refs = {"dataset": ("EODataset", spec.dataset_ref.name)}
    if spec.from_tuning:
        refs["tuning"] = ("TuningExperiment", spec.from_tuning.name)
    return refs


def _refs_deployment(spec: ModelDeploymentSpec) -> dict[str, tuple[str, str]]:
    refs = {}
    for key, ref in (("model", spec.model_ref), ("canaryModel", spec.canary.model_ref if spec.canary else None)):
        if ref is not None and ref.tuning_experiment:
            refs[key] = ("TuningExperiment", ref.tuning_experiment)
    if spec.monitoring.reference_dataset_ref:
        refs["referenceDataset"] = ("EODataset", spec.monitoring.reference_dataset_ref.name)
    return refs


_PHASE = PrinterColumn("Phase", ".status.phase", description="Pending, Running, Succeeded, Failed (or Ready)")
_PROGRESS = PrinterColumn("Progress", ".status.progress", description="Work done so far")
_AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class KindInfo:
    """Everything earthops needs to know about a kind, in one place."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    resource: type[Resource[Any, Any]]
    spec: type[ApiModel]
    status: type[CommonStatus]
    #: Folder of this kind's runs in the store (`<root>/<area>/<ns>/<name>/<run-id>/`).
    store_area: str
    #: Printer columns after NAME (`Age` is appended).
    columns: tuple[PrinterColumn, ...]
    #: References to other resources in the same namespace, by input name: {key: (kind, name)}. The
    #: runtime receives each referenced resource's published run as ``--input key=<URI>``
    #: (``inputs={key: uri}``), once the referenced resource is in its ``ready_phase``.
    references: Callable[[Any], dict[str, tuple[str, str]]] = field(repr=False)
    #: The phase that counts as done for resources that reference this one.
    ready_phase: str = "Succeeded"
    #: The data-plane entrypoint that runs this kind (``module:function`` in earthops_runtime), named
    #: here as text so the control plane never imports the data plane. None: not built yet.
    runtime: str | None = None

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def names(self) -> set[str]:
        """Every name the CLI accepts for the kind."""
        return {self.kind.lower(), self.plural, *self.short_names}

    @property
    def printer_columns(self) -> list[PrinterColumn]:
        return [*self.columns, _AGE]

    @staticmethod
    def storage(spec: Any) -> Any:
        """The spec's :class:`~earthops.api.common.Storage` (``spec.storage``, or an EODataset's
        ``spec.output.storage``), or None: where its runs and their credentials live."""
        return getattr(spec, "storage", None) or getattr(getattr(spec, "output", None), "storage", None)


KINDS: dict[str, KindInfo] = {
    k.kind: k
    for k in (
        KindInfo(
            "EODataset", "eodatasets", ("eods",), EODataset, EODatasetSpec, EODatasetStatus, "datasets",
            (
                _PHASE, _PROGRESS,
                PrinterColumn("Chips", ".status.chips.train", "integer", "Training chips"),
                PrinterColumn("Valid", ".status.validation.passed", "boolean", "Whether validation passed", 1),
                PrinterColumn("Collection", ".status.collection", description="STAC collection", priority=1),
            ),
            _refs_dataset,
            runtime="earthops_runtime.dataset:run",
        ),
        KindInfo(
            "TuningExperiment", "tuningexperiments", ("tex", "tune"), TuningExperiment, TuningExperimentSpec,
            TuningExperimentStatus, "experiments",
            (
                _PHASE,
                PrinterColumn("Trials", ".status.progress", description="Trials finished out of maxTrials"),
                PrinterColumn("Best", ".status.bestMetric", "number", "Best objective value so far"),
                PrinterColumn("Model", ".status.registeredModel.version", description="Registered model version"),
                PrinterColumn("Failed", ".status.trials.failed", "integer", "Crashed trials", 1),
                PrinterColumn("Report", ".status.report", description="Trials report in the store", priority=1),
            ),
            _refs_tuning,
            runtime="earthops_runtime.tuning:run",
        ),
        KindInfo(
            "AblationStudy", "ablationstudies", ("abl",), AblationStudy, AblationStudySpec, AblationStudyStatus,
            "ablations",
            (
                _PHASE,
                PrinterColumn("Trials", ".status.progress", description="Trials finished out of (components + 1) x repeats"),
                PrinterColumn("Base", ".status.baseMetric", "number", "The base model's mean objective"),
                PrinterColumn("Top", ".status.mostImportant.component", description="Most important component"),
                PrinterColumn("Delta", ".status.mostImportant.delta", "number", "Its objective change against the base"),
                PrinterColumn("Failed", ".status.trialsFailed", "integer", "Crashed trials", 1),
                PrinterColumn("Report", ".status.report", description="The study's report in the store", priority=1),
            ),
            _refs_ablation,
            runtime="earthops_runtime.ablation:run",
        ),
        KindInfo(
            "ModelDeployment", "modeldeployments", ("mdep",), ModelDeployment, ModelDeploymentSpec,
            ModelDeploymentStatus, "deployments",
            (
                _PHASE,
                PrinterColumn("Version", ".status.modelVersion", description="Model version served"),
                PrinterColumn("URL", ".status.url", description="Where the model answers"),
                PrinterColumn("Canary", ".status.canaryTrafficPercent", "integer", "Canary traffic percent", 1),
                PrinterColumn("Drift", ".status.drift.detected", "boolean", "Drift detected", 1),
            ),
            _refs_deployment,
            ready_phase="Ready",
        ),
    )
}


def kind_for(name: str) -> KindInfo:
    """Look a kind up by any of its names (kind, plural, singular, short name), case-insensitively."""
    wanted = name.lower()
    for info in KINDS.values():
        if wanted in info.names:
            return info
    accepted = ", ".join(sorted(n for info in KINDS.values() for n in info.names))
    raise KeyError(f"unknown kind {name!r}; accepted: {accepted}")
