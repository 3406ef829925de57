"""TuningExperiment: asynchronous hyperparameter tuning of an EO model on Ray, with early stopping."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from earthops.api.base import ApiModel, Rule, keyed_list
from earthops.api.common import CommonStatus, Duration, LocalRef, RayCompute, Storage, TrialResources

#: Zoo name (`iceberg-cnn`) or import path of a factory (`package.module:factory`).
ModelName = Annotated[
    str, StringConstraints(pattern=r"^([a-z0-9][a-z0-9-]*|[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*)$", max_length=256)
]
MetricName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_./-]*$", max_length=128)]


class Model(ApiModel):
    """The model to train."""

    name: ModelName
    """A zoo model (`iceberg-cnn`, `resnet18-ms`, `unet-small`) or `package.module:factory`."""
    parameters: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the model factory (e.g. `dropout`, `kernelSize`)."""


class Training(ApiModel):
    """How one model is trained (shared by tuning trials, ablation trials and the final model)."""

    epochs: Annotated[int, Field(ge=1, le=10_000)] = 10
    """Passes over the training split."""
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = 32
    """Chips per batch."""
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    """Optimiser."""
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 1e-3
    """Initial learning rate."""
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    """L2 weight decay."""
    schedule: Literal["constant", "cosine", "step", "onecycle"] = "constant"
    """Learning-rate schedule."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed for weights, shuffling and dropout: the same seed reproduces a trial."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` uses CUDA with mixed precision when a GPU is present."""


#: `training.<a field of Training>` or `model.<a factory argument>`.
_PARAMETER_NAME = (r"^(training\.(" + "|".join(sorted(f.alias or n for n, f in Training.model_fields.items()))
                   + r")|model\.[A-Za-z_][A-Za-z0-9_]*)$")


class SearchParameter(ApiModel):
    """One dimension of the search space."""

    cel_rules = (
        Rule("!(self.type in ['double', 'int']) || (has(self.min) && has(self.max) && self.min <= self.max)",
             "double and int parameters need min and max with min <= max", ".min"),
        Rule("self.type != 'discrete' || (has(self.values) && size(self.values) > 0)",
             "discrete parameters need a non-empty values list (numbers)", ".values"),
        Rule("self.type != 'categorical' || (has(self.choices) && size(self.choices) > 0)",
             "categorical parameters need a non-empty choices list", ".choices"),
        Rule("self.scale != 'log' || (has(self.min) && self.min > 0.0)",
             "log scale needs min > 0", ".scale"),
        Rule("!has(self.values) || self.type == 'discrete'", "values are for discrete parameters", ".values"),
        Rule("!has(self.choices) || self.type == 'categorical'", "choices are for categorical parameters", ".choices"),
        Rule("self.type != 'int' || ((!has(self.min) || self.min == double(int(self.min))) && "
             "(!has(self.max) || self.max == double(int(self.max))))",
             "int parameters need whole-number min and max", ".min"),
        Rule("self.type != 'int' || !has(self.step) || (self.step >= 1.0 && self.step == double(int(self.step)))",
             "int parameters need a whole-number step >= 1", ".step"),
        Rule("self.type in ['double', 'int'] || (!has(self.min) && !has(self.max) && !has(self.step) && "
             "self.scale == 'linear')",
             "min, max, step and scale are for double and int parameters (discrete and categorical ones take "
             "values or choices)", ".type"),
    )

    name: Annotated[str, StringConstraints(pattern=_PARAMETER_NAME, max_length=128)]
    """What the parameter sets: `training.<field>` (a field of `training`, e.g. `training.learningRate`)
    or `model.<parameter>` (a model factory argument, e.g. `model.dropout`)."""
    type: Literal["double", "int", "discrete", "categorical"]
    """Kind of values."""
    min: float | None = None
    """Lower bound (double, int)."""
    max: float | None = None
    """Upper bound (double, int)."""
    scale: Literal["linear", "log"] = "linear"
    """Sampling scale for double and int."""
    step: Annotated[float, Field(gt=0)] | None = None
    """Quantisation step for double and int (and grid spacing)."""
    values: Annotated[list[float], Field(min_length=1, max_length=1000)] | None = None
    """discrete: the numbers to choose from (integral values are passed as integers)."""
    choices: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=256)]],
                       Field(min_length=1, max_length=1000)] | None = None
    """categorical: the options, as text (``adam``, ``adamw``; ``"true"``/``"false"`` for flags)."""


class Objective(ApiModel):
    """The metric to optimise."""

    metric: MetricName = "val_loss"
    """Metric reported by the trainer (`val_loss`, `val_accuracy`, `val_f1`, `val_iou`)."""
    goal: Literal["minimize", "maximize"] = "minimize"
    """Direction."""
    target: float | None = None
    """Stop the experiment once a trial reaches this value."""


class Algorithm(ApiModel):
    """The searcher: which configuration to try next."""

    name: Literal["random", "grid", "tpe", "bayesian", "hyperband", "bohb", "pbt"] = "random"
    """Search algorithm."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the searcher."""


class EarlyStopping(ApiModel):
    """The scheduler: when to stop a hopeless trial."""

    name: Literal["median", "asha", "none"] | None = None
    """`median` (the default): stop a trial worse than the median of the others at the same step
    (Maggy's rule); `asha`: asynchronous successive halving; `none`. Must be left unset with the
    algorithms `hyperband`, `bohb` and `pbt`, which schedule trials themselves (hyperband and bohb
    halve by `reductionFactor`; pbt exploits and explores every `gracePeriod` epochs)."""
    min_trials: Annotated[int, Field(ge=1, le=1000)] = 3
    """median: trials that must have reported a step before one is stopped at that step."""
    grace_period: Annotated[int, Field(ge=1, le=10_000)] = 1
    """Epochs every trial runs before it can be stopped."""
    reduction_factor: Annotated[float, Field(gt=1, le=16)] = 3.0
    """asha: the halving rate."""


class TuningExperimentSpec(ApiModel):
    """A hyperparameter search: space, objective, budget."""

    cel_rules = (
        Rule("self.maxConcurrentTrials <= self.maxTrials", "maxConcurrentTrials must be <= maxTrials", ".maxConcurrentTrials"),
        Rule("self.datasetRef == oldSelf.datasetRef", "datasetRef is immutable", ".datasetRef", transition=True),
        Rule("self.model == oldSelf.model", "model is immutable", ".model", transition=True),
        Rule("self.searchSpace == oldSelf.searchSpace", "searchSpace is immutable", ".searchSpace", transition=True),
        Rule("self.objective == oldSelf.objective", "objective is immutable", ".objective", transition=True),
        Rule("self.algorithm == oldSelf.algorithm", "algorithm is immutable", ".algorithm", transition=True),
        Rule("self.earlyStopping == oldSelf.earlyStopping", "earlyStopping is immutable", ".earlyStopping", transition=True),
        Rule("self.algorithm.name != 'grid' || self.searchSpace.all(p, !(p.type in ['double', 'int']) || has(p.step))",
             "grid search needs a step on every double and int parameter (or use discrete values)", ".searchSpace"),
        Rule("self.algorithm.name != 'grid' || self.searchSpace.all(p, p.scale != 'log')",
             "grid search takes evenly stepped points: scale log is not used with grid (list log-spaced points as "
             "discrete values)", ".searchSpace"),
        Rule("self.algorithm.name != 'grid' || self.searchSpace.all(p, !has(p.step) || !has(p.min) || !has(p.max) || "
             "(p.max - p.min) / p.step < 100000.0)",
             "grid search: a parameter has more than 100000 points from min to max by step", ".searchSpace"),
        Rule("self.algorithm.name != 'pbt' || self.searchSpace.exists(p, p.name.startsWith('training.'))",
             "pbt mutates training.* parameters during training: add at least one (e.g. training.learningRate); "
             "model parameters are fixed per trial", ".searchSpace"),
        Rule("!(self.algorithm.name in ['hyperband', 'bohb', 'pbt']) || !has(self.earlyStopping.name)",
             "earlyStopping.name must be unset when algorithm.name is hyperband, bohb or pbt: those algorithms "
             "schedule trials themselves (they use earlyStopping.reductionFactor and gracePeriod)",
             ".earlyStopping.name"),
    )

    dataset_ref: LocalRef
    """The EODataset to train on (waits until it is Ready)."""
    model: Model
    """The model."""
    training: Training = Field(default_factory=Training)
    """Training settings; search-space parameters `training.*` override them per trial."""
    search_space: Annotated[list[SearchParameter], *keyed_list("name")] = Field(min_length=1, max_length=64)
    """Parameters to tune."""
    objective: Objective = Field(default_factory=Objective)
    """What to optimise."""
    algorithm: Algorithm = Field(default_factory=Algorithm)
    """Searcher."""
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    """Scheduler."""
    max_trials: Annotated[int, Field(ge=1, le=100_000)] = 16
    """Trials to run in all."""
    max_concurrent_trials: Annotated[int, Field(ge=1, le=10_000)] = 2
    """Trials running at the same time."""
    max_failed_trials: Annotated[int, Field(ge=0, le=100_000)] = 3
    """Crashed trials tolerated; one more fails the experiment."""
    trial_retries: Annotated[int, Field(ge=0, le=10)] = 0
    """Retries of a crashed trial before it counts as failed."""
    timeout: Duration | None = None
    """Wall-clock limit of the experiment (`2h`); also the RayJob's active deadline."""
    resources: TrialResources = Field(default_factory=TrialResources)
    """Resources per trial."""
    compute: RayCompute = Field(default_factory=RayCompute)
    """Ray cluster shape (cluster mode)."""
    storage: Storage = Field(default_factory=Storage)
    """Store for trials, checkpoints and the registered model."""
    model_name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)] | None = None
    """Registry name of the best model (default: the experiment's name)."""


class TrialCounts(ApiModel):
    """Trials by state."""

    pending: Annotated[int, Field(ge=0)] = 0
    """Not started."""
    running: Annotated[int, Field(ge=0)] = 0
    """Running now."""
    succeeded: Annotated[int, Field(ge=0)] = 0
    """Finished all epochs."""
    stopped: Annotated[int, Field(ge=0)] = 0
    """Stopped early by the scheduler."""
    failed: Annotated[int, Field(ge=0)] = 0
    """Crashed (after retries)."""


class BestTrial(ApiModel):
    """The best trial so far."""

    id: str
    """Trial id."""
    metric: float
    """Its objective value."""
    parameters: dict[str, str] = Field(default_factory=dict)
    """Its parameters (as text)."""


class RegisteredModel(ApiModel):
    """A model version in the registry."""

    name: str
    """Model name."""
    version: str
    """Version (`v1`, ...)."""
    uri: str | None = None
    """Where the version is in the store."""


class TuningExperimentStatus(CommonStatus):
    """Observed state of a TuningExperiment."""

    trials: TrialCounts | None = None
    """Trials by state."""
    best_trial: BestTrial | None = None
    """Best trial so far."""
    best_metric: float | None = None
    """The best trial's objective value (for printing)."""
    registered_model: RegisteredModel | None = None
    """The best model, once registered."""
    report: str | None = None
    """Where the trials report is in the store (trials table, learning curves, parameter importance)."""
