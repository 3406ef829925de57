"""AblationStudy: which input features and which parts of the model matter.

One base trial per seed with everything, and one trial per left-out component and seed (the policy
says what a component is); each component's objective is compared with the base trial of the same seed
(paired), with a confidence interval, a corrected p-value and a rank.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from earthops.api.base import ApiModel, Rule, StringSet, keyed_list
from earthops.api.common import CommonStatus, Duration, LocalRef, RayCompute, Storage, TrialResources
from earthops.api.tuning import Model, Objective, Training

ComponentName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$", max_length=128)]
#: A submodule name as ``torch.nn.Module.named_modules`` writes it (``conv3``, ``layer2.0``).
LayerName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$", max_length=256)]


class FeatureGroup(ApiModel):
    """Features left out together."""

    name: ComponentName
    """Group name, used in the report."""
    features: Annotated[StringSet, Field(min_length=1)]
    """Features (bands or derived features) in the group."""


class LayerGroup(ApiModel):
    """Named submodules of the model left out together: an explicit list, or every submodule whose
    name starts with a prefix (the paper's `conv` / `pool` / `dropout` groups)."""

    cel_rules = (
        Rule("has(self.layers) != has(self.prefix)", "set exactly one of layers and prefix"),
    )

    name: ComponentName
    """Group name, used in the report."""
    layers: Annotated[list[LayerName], Field(min_length=1, json_schema_extra={"x-kubernetes-list-type": "set"})] | None = None
    """Submodule names (as the model names them, e.g. `conv3`, `dropout2`)."""
    prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$", max_length=256)] | None = None
    """Every submodule whose name starts with this prefix (`conv` matches `conv2`, `conv3`, ...; a
    submodule inside a matched one is removed with it). The first and the last layer never match."""


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
    """Single input features (bands or derived features) to leave out one at a time; the model of that
    trial is built for one input channel less."""
    feature_groups: Annotated[list[FeatureGroup], *keyed_list("name")] = Field(default_factory=list)
    """Groups of features to leave out together."""
    layers: Annotated[list[LayerName], Field(json_schema_extra={"x-kubernetes-list-type": "set"})] = Field(
        default_factory=list)
    """Model submodules to remove one at a time: a shape-preserving one becomes an identity; one that
    changes shapes is refused before any trial unless the model rebuilds itself without it (iceberg-cnn
    does). The first and the last layer cannot be removed."""
    layer_groups: Annotated[list[LayerGroup], *keyed_list("name")] = Field(default_factory=list)
    """Groups of submodules to remove together (a list or a name prefix)."""
    model_variants: Annotated[list[ModelVariant], *keyed_list("name")] = Field(default_factory=list)
    """Alternative models to compare with the base model."""


class AblationStudySpec(ApiModel):
    """A leave-one-component-out study, run as parallel trials."""

    cel_rules = (
        Rule("has(self.training) != has(self.fromTuning)", "set exactly one of training and fromTuning"),
        Rule("self.policy != 'leave-one-group-out' || size(self.components.featureGroups) + "
             "size(self.components.layerGroups) > 0",
             "policy leave-one-group-out needs featureGroups or layerGroups", ".policy"),
        Rule("self.policy != 'leave-one-group-out' || size(self.components.features) + "
             "size(self.components.layers) == 0",
             "policy leave-one-group-out leaves out whole groups: put single features and layers in "
             "featureGroups or layerGroups", ".policy"),
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
    """Take the best trial's settings of this TuningExperiment (its `training.*` and `model.*` search
    parameters over its training settings and model parameters); waits until it has succeeded, and
    fails if it failed. The report names the trial."""
    components: Components
    """What to ablate."""
    policy: Literal["leave-one-component-out", "leave-one-group-out"] = "leave-one-component-out"
    """`leave-one-component-out`: one trial per feature, feature group, layer, layer group and model
    variant; `leave-one-group-out`: one trial per feature group, layer group and model variant."""
    objective: Objective = Field(default_factory=Objective)
    """The metric compared between trials (its goal says which direction is better)."""
    repeats: Annotated[int, Field(ge=1, le=100)] = 3
    """Seeds per trial (seed = training seed + 0, 1, ...): each component's trial with seed s is paired
    with the base trial of seed s. With 1 no confidence interval can be given."""
    permutation_repeats: Annotated[int, Field(ge=0, le=100)] = 5
    """Permutation importance of every feature on each trained base model: shuffles per feature
    (0: none)."""
    max_concurrent_trials: Annotated[int, Field(ge=1, le=10_000)] = 2
    """Trials running at the same time."""
    max_failed_trials: Annotated[int, Field(ge=0, le=100_000)] = 0
    """Crashed trials tolerated; one more fails the study (a component with a failed trial is reported
    over its remaining pairs)."""
    trial_retries: Annotated[int, Field(ge=0, le=10)] = 0
    """Retries of a crashed trial before it counts as failed."""
    timeout: Duration | None = None
    """Wall-clock limit of the study (`2h`); also the RayJob's active deadline."""
    resources: TrialResources = Field(default_factory=TrialResources)
    """Resources per trial (`gpu: 1` trains each trial on a GPU)."""
    compute: RayCompute = Field(default_factory=RayCompute)
    """Ray cluster shape (cluster mode)."""
    storage: Storage = Field(default_factory=Storage)
    """Store for results and the report."""


class ComponentImpact(ApiModel):
    """How much leaving a component out changed the objective (component minus base, paired by seed)."""

    component: str
    """The component."""
    delta: float
    """Mean objective change against the base trials of the same seeds."""
    std: float = 0.0
    """Standard deviation of the paired differences over repeats."""
    ci_low: float | None = None
    """Lower end of the 95% confidence interval of the delta (none with one repeat)."""
    ci_high: float | None = None
    """Upper end of the 95% confidence interval of the delta (none with one repeat)."""
    p_value: float | None = None
    """Paired t-test p-value, Holm-corrected across components (none with one repeat)."""
    significant: bool | None = None
    """Whether the interval excludes zero."""


class AblationStudyStatus(CommonStatus):
    """Observed state of an AblationStudy."""

    trials_total: Annotated[int, Field(ge=0)] | None = None
    """Trials in the study ((components + 1) x repeats)."""
    trials_done: Annotated[int, Field(ge=0)] | None = None
    """Trials finished."""
    trials_failed: Annotated[int, Field(ge=0)] | None = None
    """Trials that crashed."""
    base_metric: float | None = None
    """The base model's mean objective over its seeds."""
    most_important: ComponentImpact | None = None
    """The component whose removal hurt the objective most."""
    tuning_trial: str | None = None
    """With fromTuning: the trial whose settings the study trains with."""
    report: str | None = None
    """URI of the report in the store (report.html, report.md, results.parquet)."""
