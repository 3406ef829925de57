"""Searchers (``spec.algorithm``) and schedulers (``spec.earlyStopping``) as Ray Tune objects.

Searcher and scheduler are separate choices, except for the algorithms that bring their own scheduler:
``hyperband`` (random search + Ray's HyperBandScheduler), ``bohb`` (Optuna TPE + Ray's
HyperBandForBOHB: BOHB's combination of a model-based searcher with HyperBand brackets, with Optuna's
TPE as the model rather than hpbandster's KDE) and ``pbt`` (random initial population + Ray's
PopulationBasedTraining over the ``training.*`` parameters). For those ``earlyStopping`` is not used.

``median`` is Maggy's rule, implemented here (:func:`median_decision` is the pure rule,
:class:`MedianStoppingScheduler` applies it inside Ray Tune): at a trial's step *t* (its epoch, once
``t >= gracePeriod``), once at least ``minTrials`` *other* trials have reported step *t*, the trial is
stopped if its metric at *t* is worse than the median of the others' metrics at *t*. Unlike Ray's
MedianStoppingRule (running averages of completed trials, over time), it compares like with like: the
same epoch of every other trial, finished or running.
"""

from __future__ import annotations

import math
import pickle
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from earthops.api.tuning import TuningExperimentSpec

# --- Maggy's median rule (pure) --------------------------------------------------------------------------


def median_decision(value: float | None, others: Sequence[float], *, goal: str, min_trials: int) -> bool:
    """Whether to stop a trial whose metric at step t is ``value``, given the other trials' metrics at t.

    True when at least ``min_trials`` others reported t and ``value`` is strictly worse than their median
    (greater for ``minimize``, smaller for ``maximize``). A missing or NaN value is worse than anything;
    NaN values of others are not counted."""
    valid = [float(v) for v in others if v is not None and not math.isnan(float(v))]
    if len(valid) < min_trials:
        return False
    if value is None or math.isnan(float(value)):
        return True
    median = statistics.median(valid)
    return value > median if goal == "minimize" else value < median


class MedianHistory:
    """Metric per (trial, step) and the stopping decisions of the median rule (no Ray)."""

    def __init__(self, *, goal: str, min_trials: int, grace_period: int):
        self.goal = goal
        self.min_trials = min_trials
        self.grace_period = grace_period
        self.values: dict[str, dict[int, float]] = {}

    def record(self, trial_id: str, step: int, value: float | None) -> bool:
        """Record a report and return whether the trial should stop now."""
        if value is not None:
            self.values.setdefault(trial_id, {})[step] = float(value)
        if step < self.grace_period:
            return False
        others = [v[step] for tid, v in self.values.items() if tid != trial_id and step in v]
        return median_decision(value, others, goal=self.goal, min_trials=self.min_trials)


def _make_median_class() -> type:
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class MedianStoppingScheduler(FIFOScheduler):
        """Maggy's median early-stopping rule as a Ray Tune scheduler (FIFO otherwise)."""

        def __init__(self, *, metric: str, goal: str, min_trials: int, grace_period: int, time_attr: str = "epoch"):
            super().__init__()
            self._metric = metric
            self.time_attr = time_attr
            self.history = MedianHistory(goal=goal, min_trials=min_trials, grace_period=grace_period)
            self.stopped: list[tuple[str, int]] = []

        def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
            return True  # metric and direction come from the spec

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            if self.time_attr not in result:
                return TrialScheduler.CONTINUE
            step = int(result[self.time_attr])
            value = result.get(self._metric)
            if self.history.record(trial.trial_id, step, None if value is None else float(value)):
                self.stopped.append((trial.trial_id, step))
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

        def debug_string(self) -> str:
            return f"Using Maggy's median stopping rule (min trials {self.history.min_trials})."

    MedianStoppingScheduler.__module__ = __name__
    MedianStoppingScheduler.__qualname__ = "MedianStoppingScheduler"
    return MedianStoppingScheduler


def __getattr__(name: str) -> Any:  # module-level lazy classes: Ray is imported only when they are used
    if name in globals():
        return globals()[name]
    if name in _LAZY:
        cls = _LAZY[name]()
        globals()[name] = cls  # cached: pickling finds it under this module's name
        return cls
    raise AttributeError(name)


# --- searchers that Ray lacks -----------------------------------------------------------------------------


def _make_list_searcher() -> type:
    from ray.tune.search import Searcher

    class ListSearcher(Searcher):
        """Suggests a fixed list of configurations in order (the grid, capped at maxTrials), then FINISHED."""

        def __init__(self, points: list[dict[str, Any]], metric: str, mode: str):
            super().__init__(metric=metric, mode=mode)
            self.points = list(points)
            self.next = 0
            self.given: dict[str, int] = {}

        def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
            return True

        def suggest(self, trial_id: str) -> dict | str | None:
            if trial_id in self.given:
                return dict(self.points[self.given[trial_id]])
            if self.next >= len(self.points):
                return Searcher.FINISHED
            self.given[trial_id] = self.next
            self.next += 1
            return dict(self.points[self.given[trial_id]])

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            pass

        def get_state(self) -> dict:
            return {"points": self.points, "next": self.next, "given": self.given}

        def set_state(self, state: dict) -> None:
            self.points, self.next, self.given = state["points"], state["next"], state["given"]

        def save(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "wb") as f:
                pickle.dump(self.get_state(), f)

        def restore(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "rb") as f:
                self.set_state(pickle.load(f))

    ListSearcher.__module__ = __name__
    ListSearcher.__qualname__ = "ListSearcher"
    return ListSearcher


def _make_bohb_searcher() -> type:
    from ray.tune.search.optuna import OptunaSearch

    class PausableOptunaSearch(OptunaSearch):
        """OptunaSearch with the ``on_pause``/``on_unpause`` hooks HyperBandForBOHB calls (only Ray's
        TuneBOHB has them; for a TPE model, pausing changes nothing)."""

        def on_pause(self, trial_id: str) -> None:
            pass

        def on_unpause(self, trial_id: str) -> None:
            pass

    PausableOptunaSearch.__module__ = __name__
    PausableOptunaSearch.__qualname__ = "PausableOptunaSearch"
    return PausableOptunaSearch


def _make_limiter() -> type:
    from ray.tune.search import ConcurrencyLimiter

    class Limiter(ConcurrencyLimiter):
        """ConcurrencyLimiter passing BOHB's pause hooks through to the searcher it wraps."""

        def on_pause(self, trial_id: str) -> None:
            getattr(self.searcher, "on_pause", lambda _t: None)(trial_id)

        def on_unpause(self, trial_id: str) -> None:
            getattr(self.searcher, "on_unpause", lambda _t: None)(trial_id)

    Limiter.__module__ = __name__
    Limiter.__qualname__ = "Limiter"
    return Limiter


_LAZY = {
    "MedianStoppingScheduler": _make_median_class,
    "ListSearcher": _make_list_searcher,
    "PausableOptunaSearch": _make_bohb_searcher,
    "Limiter": _make_limiter,
}


# --- the choice ---------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What Ray Tune gets: searcher, scheduler, param space, number of samples, and how to name them."""

    search_alg: Any
    scheduler: Any
    param_space: dict[str, Any] | None
    num_samples: int
    searcher_name: str
    scheduler_name: str
    needs_checkpoints: bool  # the scheduler pauses or exploits trials (restored from checkpoints)


def mode(spec: TuningExperimentSpec) -> str:
    return "min" if spec.objective.goal == "minimize" else "max"


def plan(spec: TuningExperimentSpec) -> Plan:
    """Searcher and scheduler for ``spec`` (see the module docstring)."""
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        HyperBandForBOHB,
        HyperBandScheduler,
        PopulationBasedTraining,
    )
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from earthops_runtime.tuning import space

    algo = spec.algorithm.name
    metric, md = spec.objective.metric, mode(spec)
    epochs = spec.training.epochs
    es = spec.early_stopping
    limit = spec.max_concurrent_trials
    limiter = __getattr__("Limiter")

    def optuna(sampler: Any, cls: Any = None) -> Any:
        from ray.tune.search.optuna import OptunaSearch

        return limiter((cls or OptunaSearch)(metric=metric, mode=md, sampler=sampler), max_concurrent=limit)

    param_space: dict[str, Any] | None = space.param_space(spec)
    num_samples = spec.max_trials
    if algo == "grid":
        points = space.grid_points(spec.search_space)[: spec.max_trials]
        search_alg = limiter(__getattr__("ListSearcher")(points, metric, md), max_concurrent=limit)
        param_space, num_samples = None, len(points)
        searcher = f"grid ({len(points)} points)"
    elif algo in ("random", "hyperband", "pbt"):
        search_alg = BasicVariantGenerator(random_state=spec.algorithm.seed, max_concurrent=limit)
        searcher = "random"
    elif algo in ("tpe", "bohb"):
        import optuna as ot

        cls = __getattr__("PausableOptunaSearch") if algo == "bohb" else None
        search_alg = optuna(ot.samplers.TPESampler(seed=spec.algorithm.seed), cls)
        searcher = "tpe (optuna)"
    elif algo == "bayesian":
        import optuna as ot

        search_alg = optuna(ot.samplers.GPSampler(seed=spec.algorithm.seed))
        searcher = "bayesian (optuna GP)"
    else:  # the contract's Literal makes this unreachable, but a clear error beats a KeyError
        from earthops_runtime.errors import SpecError

        raise SpecError("spec.algorithm.name", f"unknown algorithm {algo!r}; accepted: random, grid, tpe, bayesian, "
                        "hyperband, bohb, pbt")

    needs_checkpoints = False
    grace = min(es.grace_period, epochs)
    if algo == "hyperband":
        scheduler = HyperBandScheduler(time_attr="epoch", max_t=epochs, reduction_factor=es.reduction_factor)
        sched, needs_checkpoints = "hyperband (from the algorithm)", True
    elif algo == "bohb":
        scheduler = HyperBandForBOHB(time_attr="epoch", max_t=epochs, reduction_factor=es.reduction_factor)
        sched, needs_checkpoints = "hyperband-for-bohb (from the algorithm)", True
    elif algo == "pbt":
        mutations = space.mutations(spec)
        if not mutations:
            from earthops_runtime.errors import SpecError

            raise SpecError("spec.searchSpace", "pbt mutates training.* parameters during training: add at least one "
                            "(e.g. training.learningRate); model parameters are fixed per trial")
        scheduler = PopulationBasedTraining(time_attr="epoch", perturbation_interval=max(1, grace),
                                            hyperparam_mutations=mutations)
        sched, needs_checkpoints = "pbt (from the algorithm)", True
    elif es.name in (None, "median"):
        scheduler = __getattr__("MedianStoppingScheduler")(metric=metric, goal=spec.objective.goal,
                                                           min_trials=es.min_trials, grace_period=grace)
        sched = f"median (Maggy's rule: minTrials {es.min_trials}, gracePeriod {grace})"
    elif es.name == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=grace,
                                  reduction_factor=es.reduction_factor)
        sched = f"asha (gracePeriod {grace}, reductionFactor {es.reduction_factor:g})"
    else:
        scheduler = FIFOScheduler()
        sched = "none (fifo)"
    return Plan(search_alg, scheduler, param_space, num_samples, searcher, sched, needs_checkpoints)
