"""Maggy's median rule, the searcher/scheduler choice, and the experiment's tables (no Ray cluster)."""

from __future__ import annotations

import math
import pickle
from typing import Any

import pytest

from earthops.api.tuning import TuningExperimentSpec
from earthops_runtime.errors import SpecError
from earthops_runtime.tuning import report as rep
from earthops_runtime.tuning import schedulers
from earthops_runtime.tuning.schedulers import MedianHistory, median_decision

pytestmark = pytest.mark.unit

# --- the pure rule --------------------------------------------------------------------------------------


def test_median_needs_min_trials_others():
    assert not median_decision(0.9, [0.1, 0.2], goal="minimize", min_trials=3)
    assert median_decision(0.9, [0.1, 0.2, 0.3], goal="minimize", min_trials=3)


@pytest.mark.parametrize(("value", "goal", "stop"), [
    (0.5, "minimize", True), (0.15, "minimize", False), (0.2, "minimize", False),  # equal to the median: kept
    (0.1, "maximize", True), (0.3, "maximize", False), (0.2, "maximize", False),
])
def test_median_direction(value: float, goal: str, stop: bool):
    assert median_decision(value, [0.1, 0.2, 0.3], goal=goal, min_trials=3) is stop


def test_median_even_count_and_nan():
    # median of 4 values is the mean of the middle two (0.25)
    assert median_decision(0.26, [0.1, 0.2, 0.3, 0.4], goal="minimize", min_trials=3)
    assert not median_decision(0.24, [0.1, 0.2, 0.3, 0.4], goal="minimize", min_trials=3)
    # NaNs of others do not count towards minTrials; a NaN value is worse than anything
    assert not median_decision(0.9, [0.1, 0.2, math.nan], goal="minimize", min_trials=3)
    assert median_decision(math.nan, [0.1, 0.2, 0.3], goal="maximize", min_trials=3)
    assert median_decision(None, [0.1, 0.2, 0.3], goal="maximize", min_trials=3)


def test_history_compares_the_same_step_of_other_trials():
    h = MedianHistory(goal="maximize", min_trials=2, grace_period=2)
    # three trials report epoch 1 and 2; the bad one is only judged from epoch 2 (grace period)
    assert not h.record("a", 1, 0.8)
    assert not h.record("b", 1, 0.7)
    assert not h.record("c", 1, 0.1)  # worse than both, but within the grace period
    assert not h.record("a", 2, 0.9)
    assert not h.record("b", 2, 0.85)  # only one other (a) at step 2 so far
    assert h.record("c", 2, 0.2)  # others at step 2: a 0.9, b 0.85 -> median 0.875
    # a trial's own earlier steps are never "others"; step 3: nobody else there yet
    assert not h.record("c", 3, 0.0)
    # finished trials still count: d at step 2 is compared with a, b, c
    assert h.values["c"][2] == 0.2
    assert h.record("d", 2, 0.5)  # median of 0.9, 0.85, 0.2 is 0.85


def test_median_scheduler_in_ray_terms():
    from ray.tune.schedulers import TrialScheduler

    sched = schedulers.MedianStoppingScheduler(metric="val_loss", goal="minimize", min_trials=1, grace_period=1)

    class T:
        def __init__(self, tid: str):
            self.trial_id = tid

    assert sched.on_trial_result(None, T("a"), {"epoch": 1, "val_loss": 0.5}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, T("b"), {"epoch": 1, "val_loss": 0.7}) == TrialScheduler.STOP
    assert sched.on_trial_result(None, T("c"), {"epoch": 1}) == TrialScheduler.STOP  # no value: worse
    assert sched.on_trial_result(None, T("d"), {"val_loss": 1.0}) == TrialScheduler.CONTINUE  # no step
    assert sched.stopped == [("b", 1), ("c", 1)]
    clone = pickle.loads(pickle.dumps(sched))  # Ray Tune pickles the scheduler into the experiment state
    assert type(clone) is type(sched) and clone.history.values == sched.history.values


# --- searcher and scheduler per algorithm ----------------------------------------------------------------


def spec(algorithm: str = "random", early: str | None = "median", **extra: Any) -> TuningExperimentSpec:
    doc = {"datasetRef": {"name": "d"}, "model": {"name": "iceberg-cnn"}, "training": {"epochs": 4},
           "searchSpace": [{"name": "training.learningRate", "type": "double", "min": 1e-4, "max": 1e-2, "scale": "log"},
                           {"name": "model.kernelSize", "type": "discrete", "values": [3, 5]}],
           "algorithm": {"name": algorithm, "seed": 3}, "earlyStopping": {"gracePeriod": 2, **({"name": early} if early else {})},
           "maxTrials": 5, "maxConcurrentTrials": 2, **extra}
    return TuningExperimentSpec.model_validate(doc)


@pytest.mark.parametrize(("algorithm", "early", "searcher", "scheduler"), [
    ("random", "median", "BasicVariantGenerator", "MedianStoppingScheduler"),
    ("random", "asha", "BasicVariantGenerator", "AsyncHyperBandScheduler"),
    ("random", "none", "BasicVariantGenerator", "FIFOScheduler"),
    ("tpe", "asha", "Limiter", "AsyncHyperBandScheduler"),
    ("bayesian", "median", "Limiter", "MedianStoppingScheduler"),
    ("random", None, "BasicVariantGenerator", "MedianStoppingScheduler"),
    ("hyperband", None, "BasicVariantGenerator", "HyperBandScheduler"),
    ("bohb", None, "Limiter", "HyperBandForBOHB"),
    ("pbt", None, "BasicVariantGenerator", "PopulationBasedTraining"),
])
def test_plan(algorithm: str, early: str | None, searcher: str, scheduler: str):
    p = schedulers.plan(spec(algorithm, early))
    assert type(p.search_alg).__name__ == searcher
    assert type(p.scheduler).__name__ == scheduler
    assert p.num_samples == 5
    if algorithm in ("hyperband", "bohb", "pbt"):
        assert p.scheduler_name.endswith("(from the algorithm)") and p.needs_checkpoints
    if algorithm == "bohb":
        assert hasattr(p.search_alg, "on_pause") and hasattr(p.search_alg.searcher, "on_unpause")
    if algorithm == "pbt":
        assert set(p.scheduler._hyperparam_mutations) == {"training.learningRate"}  # model params are not mutated
    from ray import cloudpickle

    cloudpickle.dumps(p.scheduler)  # Ray Tune saves it with the experiment state


def test_plan_grid_is_capped_by_max_trials():
    s = spec("grid", searchSpace=[{"name": "model.kernelSize", "type": "discrete", "values": [2, 3, 5]},
                                  {"name": "model.poolSize", "type": "discrete", "values": [2, 3]}], maxTrials=4)
    p = schedulers.plan(s)
    assert p.num_samples == 4 and p.param_space is None
    searcher = p.search_alg.searcher
    got = [searcher.suggest(f"t{i}") for i in range(5)]
    assert got[:4] == [{"model.kernelSize": 2, "model.poolSize": 2}, {"model.kernelSize": 2, "model.poolSize": 3},
                       {"model.kernelSize": 3, "model.poolSize": 2}, {"model.kernelSize": 3, "model.poolSize": 3}]
    assert got[4] == "FINISHED"
    clone = pickle.loads(pickle.dumps(searcher))
    assert clone.next == 4


def test_pbt_needs_a_training_parameter():
    model_only = [{"name": "model.kernelSize", "type": "discrete", "values": [3, 5]}]
    with pytest.raises(ValueError, match="pbt mutates training"):  # the contract refuses it before any run
        spec("pbt", None, searchSpace=model_only)
    # and so does the runtime, for a spec that reaches it unchecked
    from earthops.api.tuning import SearchParameter

    s = spec("pbt", None)
    s = s.model_copy(update={"search_space": [SearchParameter.model_validate(model_only[0])]})
    with pytest.raises(SpecError, match="pbt mutates training"):
        schedulers.plan(s)


# --- tables, importance, utilisation ----------------------------------------------------------------------


def records() -> list[rep.TrialRecord]:
    def hist(*vals: float) -> list[dict[str, Any]]:
        return [{"epoch": i + 1, "val_accuracy": v, "val_loss": 1 - v} for i, v in enumerate(vals)]

    return [
        rep.TrialRecord("t1", {"model.kernelSize": 3, "training.optimizer": "adam"}, "TERMINATED", hist(0.6, 0.8, 0.9), seconds=3),
        rep.TrialRecord("t2", {"model.kernelSize": 5, "training.optimizer": "sgd"}, "TERMINATED", hist(0.5, 0.55), seconds=2),
        rep.TrialRecord("t3", {"model.kernelSize": 2, "training.optimizer": "sgd"}, "ERROR", hist(0.4),
                        error="Failure # 1\nTraceback ...\n  File x\nValueError: kernel 2 is broken\n", seconds=1),
        rep.TrialRecord("t4", {"model.kernelSize": 4, "training.optimizer": "adam"}, "RUNNING", hist(0.7)),
        rep.TrialRecord("t5", {"model.kernelSize": 4, "training.optimizer": "adam"}, "TERMINATED", []),  # cancelled
    ]


def test_states_and_counts():
    rs = records()
    assert [r.state(3) for r in rs] == ["succeeded", "stopped", "failed", "running", "stopped"]
    assert rep.counts(rs, 3, max_trials=8) == {"pending": 3, "running": 1, "succeeded": 1, "stopped": 2, "failed": 1}


def test_best_trial_uses_the_last_value():
    rs = records()
    assert rep.best_trial(rs, "val_accuracy", "maximize").id == "t1"
    assert rep.best_trial(rs, "val_loss", "minimize").id == "t1"
    rs[0].history[-1]["val_accuracy"] = 0.1  # its best is still 0.8, but the final checkpoint has 0.1
    assert rep.best_trial(rs, "val_accuracy", "maximize", finished_only=True, epochs=3).id == "t2"
    assert rep.best_trial(rs, "val_accuracy", "maximize").id == "t4"  # running trials count for the status


def test_trials_table():
    rows = rep.trials_table(records(), ["model.kernelSize", "training.optimizer"], "val_accuracy", "maximize", 3)
    assert [r["trial_id"] for r in rows] == ["t1", "t2", "t3", "t4"]  # the never-started trial is left out
    t1, t2, t3, _ = rows
    assert t1 == {"trial_id": "t1", "model.kernelSize": 3, "training.optimizer": "adam", "state": "succeeded",
                  "val_accuracy_best": 0.9, "val_accuracy_last": 0.9, "epochs": 3, "duration_s": 3.0, "error": None}
    assert t2["state"] == "stopped" and t2["epochs"] == 2 and t2["val_accuracy_best"] == 0.55
    assert t3["state"] == "failed" and t3["error"] == "ValueError: kernel 2 is broken"


def test_history_rows():
    rows = rep.history_rows(records())
    assert len(rows) == 7
    assert rows[0] == {"trial_id": "t1", "epoch": 1, "val_accuracy": 0.6, "val_loss": pytest.approx(0.4)}


def test_history_keeps_the_last_report_of_an_epoch_a_pbt_clone_repeated():
    # epochs 1, 2, then PBT cloned another trial's epoch-1 checkpoint into it: 2 and 3 again
    history = [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.52},
               {"epoch": 2, "val_accuracy": 0.61}, {"epoch": 3, "val_accuracy": 0.7}]
    rows = rep.history_rows([rep.TrialRecord("t1", {}, "TERMINATED", history)])
    assert [(r["epoch"], r["val_accuracy"]) for r in rows] == [(1, 0.5), (2, 0.61), (3, 0.7)]


def test_short_error():
    assert rep.short_error("x\ntorch.OutOfMemoryError: CUDA out of memory. Tried 2 GiB") == \
        "torch.OutOfMemoryError: CUDA out of memory. Tried 2 GiB"
    assert rep.short_error("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low") \
        .startswith("ray.exceptions.OutOfMemoryError")
    assert rep.short_error("something odd") == "something odd" and rep.short_error(None) is None


def test_importance():
    rows = [{"lr": lr, "opt": opt, "k": 3, "acc": acc} for lr, opt, acc in
            [(0.1, "adam", 0.9), (0.2, "adam", 0.8), (0.3, "sgd", 0.5), (0.4, "sgd", 0.4), (0.5, "sgd", 0.45)]]
    scores = rep.importance(rows, ["lr", "opt", "k"], "acc")
    assert scores["lr"]["method"] == "spearman" and scores["lr"]["score"] == pytest.approx(0.9)
    assert scores["opt"]["method"] == "eta2"
    # eta^2 by hand: groups adam (0.9, 0.8), sgd (0.5, 0.4, 0.45)
    ys = [0.9, 0.8, 0.5, 0.4, 0.45]
    m = sum(ys) / 5
    between = 2 * (0.85 - m) ** 2 + 3 * (0.45 - m) ** 2
    total = sum((y - m) ** 2 for y in ys)
    assert scores["opt"]["score"] == pytest.approx(between / total)
    assert scores["k"]["score"] is None and scores["k"]["trials"] == 5  # constant: no information
    assert rep.importance(rows[:2], ["lr"], "acc")["lr"]["score"] is None  # fewer than 3 trials


def test_utilisation():
    assert rep.utilisation(90, 50, 2) == 0.9
    assert rep.utilisation(1, 0, 2) is None


def test_plots_are_png():
    from earthops_runtime.tuning import plots

    png = plots.learning_curves(records(), "val_accuracy", 3, best_id="t1")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    scores = rep.importance([{"a": i, "acc": i * 0.1} for i in range(4)], ["a"], "acc")
    assert plots.parameter_importance(scores, "acc")[:4] == b"\x89PNG"


def test_quantities_and_durations():
    from earthops.api.common import duration_seconds, quantity_value

    assert duration_seconds("1h30m") == 5400 and duration_seconds("90s") == 90 and duration_seconds(None) is None
    assert duration_seconds("500ms") == 0.5
    assert quantity_value("4Gi") == 4 * 2**30 and quantity_value("500m") == 0.5 and quantity_value(2) == 2.0
    assert quantity_value("1e3") == 1000 and quantity_value(None) is None
    with pytest.raises(ValueError, match="'lots' is not a Kubernetes quantity"):
        quantity_value("lots")
