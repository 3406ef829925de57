"""The TuningExperiment entrypoint: asynchronous trials on Ray Tune, early stopping, resume, registry.

Driver (this process): validate the space, pick searcher and scheduler (:mod:`.schedulers`), run
Ray Tune with its state in ``<store>/experiments/<ns>/<name>/_tune/<run-id>/`` (a restarted driver
restores it and does not re-run finished trials), follow the trials (status, throttled to about one
report a second), apply the failure budget and the objective target, then publish the trials table,
history, plots and summary at ``<run_key>`` and register the best trial's model.

Trials (Ray actors): build the trainer for the trial's config, restore its checkpoint when Tune hands
one (a retry, PBT's exploit, a resumed experiment), train epoch by epoch and report every epoch with a
checkpoint.

The Ray Tune machinery (state in the store, restore, the failure budget, the target, the unknown-metric
guard, throttled status reports) is :mod:`earthops_runtime.trials`, shared with the AblationStudy.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

from earthops.api import TuningExperiment
from earthops.api.common import duration_seconds
from earthops.api.tuning import TuningExperimentSpec
from earthops.core.store import Store
from earthops_runtime.entrypoint import SUMMARY_FILE, Outcome, Run, Runtime
from earthops_runtime.errors import RunFailed
from earthops_runtime.trials import InPlace as _InPlace
from earthops_runtime.trials import (
    Live,
    metric_rows,
    run_trials,
    train_and_report,
    trial_error,
    trial_resources,
)
from earthops_runtime.trials import scoped_env as scoped_env  # re-exported: benchmarks use it
from earthops_runtime.trials import trainer_options as trainer_options  # re-exported: benchmarks use it
from earthops_runtime.tuning import report as rep
from earthops_runtime.tuning import schedulers, space

# --- the trial ------------------------------------------------------------------------------------------


def train_trial(config: dict[str, Any], *, setup: dict[str, Any]) -> None:
    """One trial (runs in a Ray actor): train ``setup``'s model with ``config`` applied, report each epoch
    with a checkpoint, continue from Tune's checkpoint when there is one."""
    from earthops_runtime.training import DatasetInfo, Trainer

    spec = TuningExperimentSpec.model_validate(setup["spec"])
    params, training = space.apply_config(spec, config)

    def build() -> Trainer:
        # a restored checkpoint keeps this trial's learning rate (PBT's mutation), not the checkpoint's
        return Trainer(DatasetInfo.open(setup["dataset"]), spec.model.name, params, training,
                       threads=max(1, int(round(setup["cpu"]))), **setup.get("trainer", {}))

    train_and_report(build, epochs=training.epochs, metric=spec.objective.metric, batch_size=training.batch_size)


# --- the driver's view of the trials ------------------------------------------------------------------


def _on_update(live: Live, trials: list[Trial]) -> None:
    """The status report while trials run (called by :class:`earthops_runtime.trials.Watch`)."""
    _report_running(live, [record_of(t, live=True) for t in trials])


def record_of(trial: Trial, *, live: bool = False, history: Any = None) -> rep.TrialRecord:
    """A :class:`~.report.TrialRecord` of a Ray trial (``history``: its results dataframe, when read)."""
    # while running, only the last result is at hand: enough for counts and the best so far
    rows = metric_rows(history, None if history is not None else trial.last_result)
    error = trial_error(trial)
    seconds = float((trial.last_result or {}).get("time_total_s") or 0.0)
    return rep.TrialRecord(id=trial.trial_id, config=dict(trial.config), ray_status=str(trial.status),
                           history=rows, error=error, seconds=seconds)


def _trial_rows(records: list[rep.TrialRecord], spec: TuningExperimentSpec) -> list[dict[str, Any]]:
    """The trials table's rows (``trials.csv``, and the trial table people see)."""
    return rep.trials_table(records, [p.name for p in spec.search_space], spec.objective.metric, spec.objective.goal,
                            spec.training.epochs)


def _detail(rows: list[dict[str, Any]], spec: TuningExperimentSpec) -> dict[str, Any]:
    return rep.trials_detail(rows, [p.name for p in spec.search_space], spec.objective.metric, spec.objective.goal,
                             spec.training.epochs)


def _status_results(records: list[rep.TrialRecord], spec: TuningExperimentSpec) -> dict[str, Any]:
    metric, goal, epochs = spec.objective.metric, spec.objective.goal, spec.training.epochs
    out: dict[str, Any] = {"trials": rep.counts(records, epochs, spec.max_trials)}
    best = rep.best_trial(records, metric, goal)
    if best is not None:
        value = best.ranked(metric)
        out["bestTrial"] = {"id": best.id, "metric": value,
                            "parameters": {k: space.as_text(v) for k, v in best.config.items()}}
        out["bestMetric"] = value
    return out


def _report_running(live: Live, records: list[rep.TrialRecord]) -> None:
    spec = live.spec
    results = _status_results(records, spec)
    c = results["trials"]
    done = c["succeeded"] + c["stopped"] + c["failed"]
    best = results.get("bestTrial")
    message = (f"{done}/{spec.max_trials} trials done ({c['running']} running, {c['stopped']} stopped early, "
               f"{c['failed']} failed)" + (f"; best {spec.objective.metric} {best['metric']:.4g} ({best['id']})"
                                           if best else ""))
    live.reporter.report("Running", done=done, total=spec.max_trials, unit="trials", message=message,
            results=results, detail=_detail(_trial_rows(records, spec), spec))


# --- the entrypoint ------------------------------------------------------------------------------------


def _run(run: Run) -> Outcome:
    """The TuningExperiment's work (see the module docstring)."""
    resource, store, reporter = run.resource, run.store, run.reporter
    spec = resource.spec
    dataset = run.input("dataset", "spec.datasetRef", spec.dataset_ref.name)
    reporter.report(stage="checking the search space, the dataset and the model")
    space.validate_space(spec)
    from earthops_runtime.training import DatasetInfo

    info = DatasetInfo.open(dataset)  # fails before any trial when the dataset is missing or unlabelled
    check_model(spec, info.task)
    reporter.report(done=0, total=spec.max_trials, message="starting trials", stage="running trials",
                    results={"trials": rep.counts([], spec.training.epochs, spec.max_trials)})
    outcome = _tune(resource, store, run.key, reporter, run.ray_address, dataset)
    reporter.report(stage=f"registering the best trial's model ({outcome.best.id})")
    registered = _register(resource, store, run.key, info, outcome)
    results = {**outcome.results, "registeredModel": registered, "report": store.url(run.key)}
    reporter.report(stage=f"publishing the report (registered {registered['name']} {registered['version']})")
    with store.publish(run.key) as run_store:
        rows = _write_outputs(run_store, outcome, resource, {**outcome.summary, "results": results})
    c = results["trials"]
    return Outcome(results, done=c["succeeded"] + c["stopped"] + c["failed"], total=spec.max_trials,
                   message=f"{c['succeeded']} trials succeeded, {c['stopped']} stopped early, {c['failed']} failed; "
                           f"best {spec.objective.metric} {results['bestMetric']:.4g}; registered "
                           f"{registered['name']} {registered['version']}",
                   detail=_detail(rows, spec))


def _replay(resource: TuningExperiment, summary: dict[str, Any]) -> Outcome:
    trials = summary["results"]["trials"]
    return Outcome(summary["results"], "already published",
                   done=sum(trials[s] for s in ("succeeded", "stopped", "failed")), total=resource.spec.max_trials)


#: The entrypoint (``earthops_runtime.tuning:run`` in ``earthops.api.KINDS``).
run = Runtime(unit="trials", body=_run, replay=_replay)


def check_model(spec: TuningExperimentSpec, task: str) -> None:
    """An unknown model, a model for another label task, an unknown model parameter or a value the model
    refuses fails the experiment before any trial (a custom factory is imported, not called)."""
    from earthops_runtime.models.zoo import ZOO, check_task, custom_factory, model_arguments

    name = spec.model.name
    if name in ZOO:
        check_task(name, ZOO[name].tasks, task)
    else:
        custom_factory(name)
    space.validate_model_space(spec, lambda parameters: model_arguments(name, parameters))


@dataclass
class Tuned:
    records: list[rep.TrialRecord]
    checkpoints: dict[str, Any]
    results: dict[str, Any]
    summary: dict[str, Any]
    best: rep.TrialRecord
    plan_names: tuple[str, str]


def _tune(resource: TuningExperiment, store: Store, run_key: str, reporter: Any, ray_address: str | None,
          dataset: str) -> Tuned:
    from earthops_runtime import raycluster

    spec = resource.spec
    raycluster.connect(ray_address)
    plan = schedulers.plan(spec)
    setup = {"spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True), "dataset": dataset,
             "cpu": spec.resources.cpu, "trainer": trainer_options()}
    live = Live(metric=spec.objective.metric, goal=spec.objective.goal, max_failed=spec.max_failed_trials,
                on_update=_on_update, spec=spec, reporter=reporter, slots=spec.max_concurrent_trials,
                target=spec.objective.target)
    # PBT clones other trials' checkpoints: Ray deletes kept-count checkpoints a clone still refers to
    # (FileNotFoundError in its checkpoint manager), so PBT keeps them all
    finished = run_trials(tune.with_parameters(train_trial, setup=setup), store=store, run_key=run_key, live=live,
                          param_space=plan.param_space, search_alg=plan.search_alg, scheduler=plan.scheduler,
                          num_samples=plan.num_samples, time_budget_s=duration_seconds(spec.timeout),
                          max_failures=spec.trial_retries, resources=trial_resources(spec.resources),
                          keep_checkpoints=None if spec.algorithm.name == "pbt" else 2)
    wall, resumed, checkpoints = finished.wall_seconds, finished.resumed, finished.checkpoints
    records = [record_of(t, history=finished.histories.get(t.trial_id)) for t in finished.trials]
    metric, goal, epochs = spec.objective.metric, spec.objective.goal, spec.training.epochs
    results = _status_results(records, spec)
    busy = sum(r.seconds for r in records)
    session_busy = sum(live.busy.values())  # a resumed driver: only what ran while it did
    summary = {
        "searcher": plan.searcher_name,
        "scheduler": plan.scheduler_name,
        "objective": {"metric": metric, "goal": goal, "target": spec.objective.target},
        "trials": results["trials"],
        "maxTrials": spec.max_trials,
        "maxConcurrentTrials": spec.max_concurrent_trials,
        "wallSeconds": round(wall, 3),
        "trialSeconds": round(busy, 3),
        "workerUtilisation": rep.utilisation(session_busy, wall, spec.max_concurrent_trials),
        "resumed": resumed,
        "targetReached": None if live.target_reached is None else {"trial": live.target_reached[0],
                                                                     "value": live.target_reached[1]},
        "tuneState": finished.tune_path,
    }
    outcome_partial = dict(records=records, checkpoints=checkpoints, results=results, summary=summary,
                           plan_names=(plan.searcher_name, plan.scheduler_name))
    failure: RunFailed | None = None
    failed = results["trials"]["failed"]
    if live.unknown_metric:
        failure = RunFailed("UnknownMetric", live.unknown_metric)
    elif failed > spec.max_failed_trials:
        shown = "; ".join(f"{r.id}: {rep.short_error(r.error)}" for r in records if r.ray_status == Trial.ERROR)[:1500]
        failure = RunFailed("TooManyFailedTrials", f"{failed} trials failed, more than maxFailedTrials "
                                   f"{spec.max_failed_trials}: {shown}")
    # the registered model is the best finished trial that has its final checkpoint (a trial cut by the
    # time budget may have none)
    best = rep.best_trial([r for r in records if r.id in checkpoints], metric, goal, finished_only=True,
                          epochs=epochs)
    if failure is None and best is None:
        failure = RunFailed("NoFinishedTrials", f"no trial finished with a value of {metric!r} and a "
                                   f"checkpoint ({failed} failed)")
    if failure is not None:
        # completed trials are never lost: the table goes beside status.json, in the (unpublished) run folder
        summary["failure"] = {"reason": failure.reason, "message": str(failure)}
        rows = _write_outputs(_InPlace(store, run_key), Tuned(best=best, **outcome_partial), resource,  # type: ignore[arg-type]
                              {**summary, "results": results})
        reporter.report(results=results, detail=_detail(rows, spec))
        raise failure
    summary["bestTrial"] = {"id": best.id, "metric": best.ranked(metric), "parameters": best.config,
                            "metrics": _final_metrics(best, metric)}
    return Tuned(best=best, **outcome_partial)  # type: ignore[arg-type]


def _final_metrics(record: rep.TrialRecord, metric: str) -> dict[str, float]:
    last = record.history[-1] if record.history else {}
    out = {metric: float(last[metric])} if metric in last else {}
    for k, v in last.items():
        if k not in out and k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) \
                and not (isinstance(v, float) and math.isnan(v)):
            out[k] = float(v)
    return out


def _write_outputs(target: Any, outcome: Tuned, resource: TuningExperiment, summary: dict[str, Any]
                   ) -> list[dict[str, Any]]:
    """Write the trials table, history, plots and summary; returns the trials table's rows."""
    import pandas as pd

    from earthops_runtime.tuning import plots

    spec = resource.spec
    metric, epochs = spec.objective.metric, spec.training.epochs
    names = [p.name for p in spec.search_space]
    rows = _trial_rows(outcome.records, spec)
    columns = ["trial_id", *names, "state", f"{metric}_best", f"{metric}_last", "epochs", "duration_s", "error"]
    table = pd.DataFrame(rows, columns=columns)
    for name in names:  # mixed types (categorical) as text, numbers as numbers
        if table[name].map(lambda v: isinstance(v, str)).any():
            table[name] = table[name].astype("string")
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    target.write_bytes("trials.parquet", buf.getvalue())
    target.write_bytes("trials.csv", table.to_csv(index=False).encode())
    history = pd.DataFrame(rep.history_rows(outcome.records))
    if history.empty:
        history = pd.DataFrame(columns=["trial_id", "epoch"])
    buf = io.BytesIO()
    history.to_parquet(buf, index=False)
    target.write_bytes("history.parquet", buf.getvalue())
    finished = [r for r in rows if r["state"] in ("succeeded", "stopped")]
    scores = rep.importance(finished, names, f"{metric}_best")
    target.write_bytes("plots/learning_curves.png", plots.learning_curves(
        outcome.records, metric, epochs, best_id=outcome.best.id if outcome.best else None,
        title=f"{resource.namespace}/{resource.name}: {metric} per epoch"))
    target.write_bytes("plots/parameter_importance.png", plots.parameter_importance(scores, metric))
    summary = {**summary, "parameterImportance": scores,
               "importanceMethod": "|Spearman rho| (numeric), eta squared of one-way ANOVA (categorical), over "
                                   "succeeded and stopped trials, each with its best objective value"}
    target.write_json(SUMMARY_FILE, summary)
    return rows


def _register(resource: TuningExperiment, store: Store, run_key: str, info: Any, outcome: Tuned) -> dict[str, Any]:
    """Rebuild the best trial's model from its final checkpoint and register it."""
    from earthops.core.registry import list_models
    from earthops_runtime.registry import ModelCard, register_model
    from earthops_runtime.training import Trainer

    spec = resource.spec
    name = spec.model_name or resource.name
    run_id = run_key.rsplit("/", 1)[-1]
    for row in list_models(store, resource.namespace, name) if store.exists(f"models/{resource.namespace}/{name}") else []:
        exp = row["experiment"]
        if (exp.get("kind"), exp.get("name"), exp.get("runId")) == ("TuningExperiment", resource.name, run_id):
            # a driver restarted after registering but before publishing: the version is already there
            return {"name": name, "version": row["version"], "uri": row["uri"]}
    best = outcome.best
    params, training = space.apply_config(spec, best.config)
    trainer = Trainer(info, spec.model.name, params, training, device="cpu")
    with outcome.checkpoints[best.id].as_directory() as d:
        trainer.load_checkpoint(d)
    metrics = _final_metrics(best, spec.objective.metric)
    # the trial's Training with its tuned values applied; the model's (tuned) arguments are the card's parameters
    hyper = training.model_dump(mode="json", by_alias=True)
    card = ModelCard(
        architecture=spec.model.name, parameters=params, task=info.task, classes=list(info.classes),
        features=list(info.features), chip_shape=tuple(info.chip_shape), mean=list(info.mean), std=list(info.std),
        metrics=metrics, hyperparameters=hyper, dataset_uri=info.uri, dataset_collection=info.collection,
        experiment={"kind": "TuningExperiment", "namespace": resource.namespace, "name": resource.name,
                    "runId": run_id, "uri": store.url(run_key), "trial": best.id},
        objective={"metric": spec.objective.metric, "goal": spec.objective.goal, "value": rep.RANKED_BY},
    )
    version = register_model(store, namespace=resource.namespace, name=name,
                             model=trainer.model, example_input=trainer.example_input(), card=card)
    return {"name": version.name, "version": version.version, "uri": version.uri}
