"""The four kinds as whole resources, and what the CRDs, the CLI and the executors know of each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from earthops.api.ablation import AblationStudySpec, AblationStudyStatus
from earthops.api.base import ApiModel
from earthops.api.common import CommonStatus, Label, Name, check_label_value, check_qualified_name
from earthops.api.dataset import EODatasetSpec, EODatasetStatus
from earthops.api.deployment import ModelDeploymentSpec, ModelDeploymentStatus
from earthops.api.tuning import TuningExperimentSpec, TuningExperimentStatus

GROUP = "earthops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "earthops"


class ObjectMeta(BaseModel):
    """Kubernetes object metadata: the fields earthops reads, and the others of ObjectMeta typed as
    the API server types them. Any other field is refused, as ``kubectl apply --validate=strict``
    refuses it (a misspelt ``namespace`` would otherwise put the resource somewhere else)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    name: Name
    namespace: Label = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = None
    generate_name: str | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    deletion_grace_period_seconds: int | None = None
    owner_references: list[dict[str, Any]] | None = None
    finalizers: list[str] | None = None
    managed_fields: list[dict[str, Any]] | None = None
    self_link: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """A null field is a field left out, and a null label or annotation value is empty text: the
        server reads metadata into Go strings, where JSON null leaves the empty string."""
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if v is not None or k not in _META_FIELDS}
            for key in ("labels", "annotations"):
                if isinstance(data.get(key), dict):
                    data[key] = {k: "" if v is None else v for k, v in data[key].items()}
        return data

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            check_qualified_name(key, "label key")
            check_label_value(key, value)
        return labels

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, annotations: dict[str, str]) -> dict[str, str]:
        for key in annotations:
            check_qualified_name(key, "annotation key", case_sensitive=False)
        size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
        if size > 256 * 1024:
            raise PydanticCustomError("annotations_size", "annotations take {size} bytes; at most 262144 (256 KiB)",
                                      {"size": size})
        return annotations


_META_FIELDS = frozenset(n for name, f in ObjectMeta.model_fields.items() for n in (name, to_camel(name)))


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

    _source: str = PrivateAttr(default="")

    @property
    def source(self) -> str:
        """Where the resource was written (``file`` or ``file (document N)``), when read from a file."""
        return self._source

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


class Ref(NamedTuple):
    """A reference to another resource in the same namespace: its kind, its name and the spec field
    that holds the name (``spec.datasetRef.name``)."""

    kind: str
    name: str
    field: str


def _refs_dataset(spec: EODatasetSpec) -> dict[str, Ref]:
    return {}


def _refs_tuning(spec: TuningExperimentSpec) -> dict[str, Ref]:
    return {"dataset": Ref("EODataset", spec.dataset_ref.name, "spec.datasetRef.name")}


def _refs_ablation(spec: AblationStudySpec) -> dict[str, Ref]:
    refs = {"dataset": Ref("EODataset", spec.dataset_ref.name, "spec.datasetRef.name")}
    if spec.from_tuning:
        refs["tuning"] = Ref("TuningExperiment", spec.from_tuning.name, "spec.fromTuning.name")
    return refs


def _refs_deployment(spec: ModelDeploymentSpec) -> dict[str, Ref]:
    refs = {}
    for key, ref, holder in (("model", spec.model_ref, "spec.modelRef.tuningExperiment"),
                             ("canaryModel", spec.canary.model_ref if spec.canary else None,
                              "spec.canary.modelRef.tuningExperiment")):
        if ref is not None and ref.tuning_experiment:
            refs[key] = Ref("TuningExperiment", ref.tuning_experiment, holder)
    if spec.monitoring.reference_dataset_ref:
        refs["referenceDataset"] = Ref("EODataset", spec.monitoring.reference_dataset_ref.name,
                                       "spec.monitoring.referenceDatasetRef.name")
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
    #: References to other resources in the same namespace, by input name: {key: Ref(kind, name,
    #: field)}. The runtime receives each referenced resource's published run as ``--input key=<URI>``
    #: (``inputs={key: uri}``), once the referenced resource is in its ``ready_phase``.
    references: Callable[[Any], dict[str, Ref]] = field(repr=False)
    #: The phase that counts as done for resources that reference this one.
    ready_phase: str = "Succeeded"
    #: The data-plane entrypoint that runs this kind (``module:function`` in earthops_runtime, run by
    #: ``python -m earthops_runtime run``; for a served kind the module run as ``python -m MODULE``), named
    #: here as text so the control plane never imports the data plane. None: not built yet.
    runtime: str | None = None
    #: What runs it on a cluster: a KubeRay ``RayJob`` (a run that ends) or a KServe ``InferenceService``
    #: (a server that stays up).
    child: Literal["RayJob", "InferenceService"] = "RayJob"

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
                PrinterColumn("Chips", ".status.chips.total", "integer",
                              "Chips in all splits (describe shows them per split)"),
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
                PrinterColumn("URL", ".status.url", description="Where the model answers"),
                PrinterColumn("Model", ".status.modelVersion", description="Model version served (model/version)"),
                PrinterColumn("Canary", ".status.canaryTrafficPercent", "integer", "Percent of requests the canary gets"),
                PrinterColumn("Ready", ".status.readyReplicas", "integer", "Replicas ready to serve"),
                PrinterColumn("Canary-Model", ".status.canaryVersion", description="Canary version (model/version)", priority=1),
                PrinterColumn("Drift", ".status.drift.detected", "boolean", "Drift detected", 1),
            ),
            _refs_deployment,
            ready_phase="Ready",
            runtime="earthops_runtime.serving",
            child="InferenceService",
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
