"""AblationStudy: which input features and which parts of the model matter."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from earthops.api.base import ApiModel, Rule, StringSet, keyed_list
from earthops.api.common import CommonStatus, LocalRef, RayCompute, Storage, TrialResources
from earthops.api.tuning import Model, Objective, Training

ComponentName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$", max_length=128)]


class FeatureGroup(ApiModel):
    """Features left out together."""

    name: ComponentName
    """Group name, used in the report."""
    features: Annotated[StringSet, Field(min_length=1)]
    """Features (bands or derived features) in the group."""


class LayerGroup(ApiModel):
    """Named submodules of the model left out together."""

    name: ComponentName
    """Group name, used in the report."""
    layers: Annotated[StringSet, Field(min_length=1)]
    """Submodule names (as the model names them, e.g. `block3`)."""


class ModelVariant(ApiModel):
    """An alternative model compared against the base model."""

    name: ComponentName
    """Variant name, used in the report."""
    model: Model
    """The variant."""


class Components(ApiModel):
    """What may be left out, one trial per component (plus the base trial with everything)."""

    cel_rules = (
        Rule(
            "size(self.features) + size(self.featureGroups) + size(self.layers) + size(self.layerGroups) + "
            "size(self.modelVariants) > 0",
            "name at least one component to ablate (features, featureGroups, layers, layerGroups or modelVariants)",
        ),
    )

    features: StringSet = Field(default_factory=list)
    """Single input features (bands or derived features) to leave out one at a time."""
    feature_groups: Annotated[list[FeatureGroup], *keyed_list("name")] = Field(default_factory=list)
    """Groups of features to leave out together."""
    layers: StringSet = Field(default_factory=list)
    """Model submodules to remove (replaced by identity) one at a time."""
    layer_groups: Annotated[list[LayerGroup], *keyed_list("name")] = Field(default_factory=list)
    """Groups of submodules to remove together."""
    model_variants: Annotated[list[ModelVariant], *keyed_list("name")] = Field(default_factory=list)
    """Alternative models to compare with the base model."""


class AblationStudySpec(ApiModel):
    """A leave-one-component-out study, run as parallel trials."""

    cel_rules = (
        Rule("has(self.training) != has(self.fromTuning)", "set exactly one of training and fromTuning"),
        Rule("self.policy != 'leave-one-group-out' || size(self.components.featureGroups) + "
             "size(self.components.layerGroups) > 0",
             "policy leave-one-group-out needs featureGroups or layerGroups", ".policy"),
        Rule("self.datasetRef == oldSelf.datasetRef", "datasetRef is immutable", ".datasetRef", transition=True),
        Rule("self.components == oldSelf.components", "components is immutable", ".components", transition=True),
    )

    dataset_ref: LocalRef
    """The EODataset to train on (waits until it is Ready)."""
    model: Model
    """The base model."""
    training: Training | None = None
    """Training settings. Exactly one of `training` and `fromTuning`."""
    from_tuning: LocalRef | None = None
    """Take the best hyperparameters of this TuningExperiment (waits until it has succeeded)."""
    components: Components
    """What to ablate."""
    policy: Literal["leave-one-component-out", "leave-one-group-out"] = "leave-one-component-out"
    """How trials are formed."""
    objective: Objective = Field(default_factory=Objective)
    """The metric compared between trials."""
    repeats: Annotated[int, Field(ge=1, le=100)] = 3
    """Seeds per trial; the report gives mean and standard deviation (error bars)."""
    max_concurrent_trials: Annotated[int, Field(ge=1, le=10_000)] = 2
    """Trials running at the same time."""
    resources: TrialResources = Field(default_factory=TrialResources)
    """Resources per trial."""
    compute: RayCompute = Field(default_factory=RayCompute)
    """Ray cluster shape (cluster mode)."""
    storage: Storage = Field(default_factory=Storage)
    """Store for results and the report."""


class ComponentImpact(ApiModel):
    """How much leaving a component out changed the objective."""

    component: str
    """The component."""
    delta: float
    """Mean objective change against the base trial."""
    std: float = 0.0
    """Standard deviation over repeats."""


class AblationStudyStatus(CommonStatus):
    """Observed state of an AblationStudy."""

    trials_total: Annotated[int, Field(ge=0)] | None = None
    """Trials in the study (components x repeats, plus the base)."""
    trials_done: Annotated[int, Field(ge=0)] | None = None
    """Trials finished."""
    trials_failed: Annotated[int, Field(ge=0)] | None = None
    """Trials that crashed."""
    most_important: ComponentImpact | None = None
    """The component whose removal hurt the objective most."""
    report: str | None = None
    """URI of the report in the store."""
