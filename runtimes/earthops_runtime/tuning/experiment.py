"""The TuningExperiment entrypoint: asynchronous trials on Ray Tune, early stopping, resume, registry.

Driver (this process): validate the space, pick searcher and scheduler (:mod:`.schedulers`), run
Ray Tune with its state in ``<store>/experiments/<ns>/<name>/_tune/<run-id>/`` (a restarted driver
restores it and does not re-run finished trials), follow the trials (status, throttled to about one
report a second), apply the failure budget and the objective target, then publish the trials table,
history, plots and summary at ``<run_key>`` and register the best trial's model.

Trials (Ray actors): build the trainer for the trial's config, restore its checkpoint when Tune hands
one (a retry, PBT's exploit, a resumed experiment), train epoch by epoch and report every epoch with a
checkpoint.

Callbacks, stoppers and schedulers are pickled by Ray Tune into the experiment state and unpickled
on restore; so they hold no driver objects, only the run key under which the live driver registers
its :class:`Live` state (:data:`LIVE`).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import posixpath
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

from earthops.api import TuningExperiment
from earthops.api.common import duration_seconds, quantity_value
from earthops.api.tuning import TuningExperimentSpec
from earthops.core.store import Store
from earthops_runtime.entrypoint import SUMMARY_FILE, Outcome, Run, Runtime
from earthops_runtime.errors import RunFailed, SpecError
from earthops_runtime.tuning import report as rep
from earthops_runtime.tuning import schedulers, space

#: Key the trainable adds when the objective metric is missing from its metrics (their names, joined).
UNKNOWN_METRIC_KEY = "earthops_reported_metrics"
#: Seconds between two status reports while trials run.
REPORT_INTERVAL_S = 1.0
#: Ray's own result keys: not metrics of the trial.
_RAY_KEYS = {
    "timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "date",
    "done", "trial_id", "iterations_since_restore", "time_since_restore", "checkpoint_dir_name", "should_checkpoint",
    "experiment_tag", "config", UNKNOWN_METRIC_KEY,
}


# --- the trial ------------------------------------------------------------------------------------------


class TrialOutOfMemory(RuntimeError):
    """A trial ran out of (GPU) memory: a failed trial like any crash, with a clear message."""


def train_trial(config: dict[str, Any], *, setup: dict[str, Any]) -> None:
    """One trial (runs in a Ray actor): train ``setup``'s model with ``config`` applied, report each epoch
    with a checkpoint, continue from Tune's checkpoint when there is one."""
    import torch

    from earthops_runtime.training import DatasetInfo, Trainer

    spec = TuningExperimentSpec.model_validate(setup["spec"])
    metric = spec.objective.metric
    trainer = None
    try:
        params, training = space.apply_config(spec, config)
        info = DatasetInfo.open(setup["dataset"])
        trainer = Trainer(info, spec.model.name, params, training, threads=max(1, int(round(setup["cpu"]))),
                          **setup.get("trainer", {}))
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            # a retry, PBT's exploit or a resumed experiment; the trainer takes the learning rate of
            # this trial's config (PBT's mutation), not the checkpoint's
            with checkpoint.as_directory() as d:
                trainer.load_checkpoint(d)
        while trainer.epoch < training.epochs:
            metrics = trainer.train_epoch()
            out: dict[str, Any] = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            out["epoch"] = int(trainer.epoch)
            if metric not in out:
                out[UNKNOWN_METRIC_KEY] = ",".join(sorted(k for k in metrics if k != "epoch"))
            with tempfile.TemporaryDirectory(prefix="earthops-ckpt-") as d:
                trainer.save_checkpoint(d)
                tune.report(out, checkpoint=tune.Checkpoint.from_directory(d))
            if metric not in out:
                return
    except torch.OutOfMemoryError as exc:
        raise TrialOutOfMemory(f"OutOfMemory: the trial ran out of memory on {getattr(trainer, 'device', '?')} "
                               f"(batchSize {training.batch_size}): {str(exc).splitlines()[0][:200]}") from None


# --- the driver's live state, and the Tune hooks that read it -------------------------------------------


@dataclass
class Live:
    """What the driver knows while Tune runs (looked up by run key from the pickled hooks)."""

    spec: TuningExperimentSpec
    reporter: Any
    slots: int
    unknown_metric: str | None = None
    target: tuple[str, float] | None = None
    target_pending: tuple[str, float] | None = None
    failed: int = 0
    too_many_failed: bool = False
    last_report: float = 0.0
    #: seconds each trial trained in this driver's lifetime (``time_since_restore``): utilisation
    busy: dict[str, float] = field(default_factory=dict)

    @property
    def stop_all(self) -> bool:
        return bool(self.unknown_metric or self.too_many_failed or self.target)


LIVE: dict[str, Live] = {}


class Guard(tune.Stopper):
    """Stops a trial that does not report the objective (and then everything: UnknownMetric), and the
    experiment once a trial reaches the objective's target or the failure budget is spent."""

    def __init__(self, key: str):
        self.key = key

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        live = LIVE.get(self.key)
        if live is None:
            return False
        spec = live.spec
        metric = spec.objective.metric
        if UNKNOWN_METRIC_KEY in result and metric not in result:
            reported = [m for m in str(result[UNKNOWN_METRIC_KEY]).split(",") if m]
            live.unknown_metric = (f"spec.objective.metric: the trainer never reports {metric!r}; it reports: "
                                   f"{', '.join(reported)} (first report of trial {trial_id})")
            return True
        target = spec.objective.target
        value = result.get(metric)
        if target is not None and value is not None and not math.isnan(float(value)):
            reached = value <= target if spec.objective.goal == "minimize" else value >= target
            if reached and live.target is None:
                # stop this trial now; everything else once it has completed (Watch), so its last
                # checkpoint is registered before the experiment stops
                live.target_pending = live.target_pending or (trial_id, float(value))
                return True
        return False

    def stop_all(self) -> bool:
        live = LIVE.get(self.key)
        return bool(live and live.stop_all)


class Watch(tune.Callback):
    """Counts failed trials (budget) and reports the status about once a second."""

    def __init__(self, key: str):
        self.key = key

    def _update(self, trials: list[Trial], force: bool = False) -> None:
        live = LIVE.get(self.key)
        if live is None:
            return
        live.failed = sum(1 for t in trials if t.status == Trial.ERROR)
        if live.failed > live.spec.max_failed_trials:
            live.too_many_failed = True
        now = time.monotonic()
        if force or now - live.last_report >= REPORT_INTERVAL_S:
            live.last_report = now
            _report_running(live, [record_of(t, live=True) for t in trials])

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        live = LIVE.get(self.key)
        if live is not None and "time_since_restore" in result:
            live.busy[trial.trial_id] = float(result["time_since_restore"])
        self._update(trials)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        live = LIVE.get(self.key)
        if live is not None and live.target_pending and live.target_pending[0] == trial.trial_id:
            live.target = live.target_pending
        self._update(trials, force=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._update(trials, force=True)

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        self._update(trials)


def record_of(trial: Trial, *, live: bool = False, history: Any = None) -> rep.TrialRecord:
    """A :class:`~.report.TrialRecord` of a Ray trial (``history``: its results dataframe, when read)."""
    rows: list[dict[str, Any]] = []
    if history is not None and len(history):
        for row in history.to_dict("records"):
            rows.append({k: v for k, v in row.items() if k not in _RAY_KEYS and not k.startswith("config/")})
    elif trial.last_result and "epoch" in trial.last_result:
        # while running, only the last result is at hand: enough for counts and the best so far
        last = {k: v for k, v in trial.last_result.items() if k not in _RAY_KEYS}
        rows = [last]
    error = None
    if trial.status == Trial.ERROR:
        try:
            err = trial.get_error()
            error = str(err) if err is not None else "the trial failed"
        except Exception:  # noqa: BLE001 - the error file may be gone; say something rather than nothing
            error = "the trial failed (no error text)"
    seconds = float((trial.last_result or {}).get("time_total_s") or 0.0)
    return rep.TrialRecord(id=trial.trial_id, config=dict(trial.config), ray_status=str(trial.status),
                           history=rows, error=error, seconds=seconds)


def _detail(records: list[rep.TrialRecord], spec: TuningExperimentSpec) -> dict[str, Any]:
    metric = spec.objective.metric
    return {"trials": [{
        "id": r.id, "state": r.state(spec.training.epochs),
        "parameters": {k: space.as_text(v) for k, v in r.config.items()},
        "metric": r.last(metric), "epoch": r.epochs_run,
    } for r in records]}


def _status_results(records: list[rep.TrialRecord], spec: TuningExperimentSpec) -> dict[str, Any]:
    metric, goal, epochs = spec.objective.metric, spec.objective.goal, spec.training.epochs
    out: dict[str, Any] = {"trials": rep.counts(records, epochs, spec.max_trials)}
    best = rep.best_trial(records, metric, goal)
    if best is not None:
        value = best.last(metric)
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
            results=results, detail=_detail(records, spec))


# --- helpers -------------------------------------------------------------------------------------------


#: Ray Tune settings for the experiment's fit only (restored after, so the process's other Tune runs
#: keep Ray's defaults): the Guard names a missing objective itself; JSON and CSV results only (the
#: history comes from them; Tune's TensorBoard logger costs about half a second per trial on 2 cores);
#: no warning about checkpoint syncs, which are per epoch on purpose.
TUNE_ENV = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
            "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


@contextlib.contextmanager
def scoped_env(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore what was there."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def trial_resources(spec: TuningExperimentSpec) -> dict[str, float]:
    res: dict[str, float] = {"cpu": float(spec.resources.cpu), "gpu": float(spec.resources.gpu)}
    try:
        memory = quantity_value(spec.resources.memory)
    except ValueError as exc:
        raise SpecError("spec.resources.memory", str(exc)) from None
    if memory:
        res["memory"] = memory
    return res


def tune_location(store: Store, run_key: str) -> tuple[str, str, Any]:
    """(storage path, experiment name, pyarrow filesystem or None) of the run's Ray Tune state:
    ``<store>/experiments/<ns>/<name>/_tune/<run-id>``."""
    parts = run_key.strip("/").split("/")
    if len(parts) < 2:
        raise ValueError(f"run key {run_key!r}: expected experiments/<ns>/<name>/<run-id>")
    tune_key = "/".join([*parts[:-1], "_tune"])
    run_id = parts[-1]
    if store.is_local:
        path = store.local_path(tune_key)
        path.mkdir(parents=True, exist_ok=True)
        return str(path), run_id, None
    import pyarrow.fs

    fs = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(store.fs))
    return store.url(tune_key).split("://", 1)[1], run_id, fs


# --- the entrypoint ------------------------------------------------------------------------------------


def _run(run: Run) -> Outcome:
    """The TuningExperiment's work (see the module docstring)."""
    resource, store, reporter = run.resource, run.store, run.reporter
    spec = resource.spec
    dataset = run.input("dataset", "spec.datasetRef", spec.dataset_ref.name)
    space.validate_space(spec)
    from earthops_runtime.training import DatasetInfo

    info = DatasetInfo.open(dataset)  # fails before any trial when the dataset is missing or unlabelled
    check_model(spec, info.task)
    reporter.report(done=0, total=spec.max_trials, message="starting trials",
                    results={"trials": rep.counts([], spec.training.epochs, spec.max_trials)})
    outcome = _tune(resource, store, run.key, reporter, run.ray_address, dataset)
    registered = _register(resource, store, run.key, info, outcome)
    results = {**outcome.results, "registeredModel": registered, "report": store.url(run.key)}
    with store.publish(run.key) as run_store:
        _write_outputs(run_store, outcome, resource, {**outcome.summary, "results": results})
    c = results["trials"]
    return Outcome(results, done=c["succeeded"] + c["stopped"] + c["failed"], total=spec.max_trials,
                   message=f"{c['succeeded']} trials succeeded, {c['stopped']} stopped early, {c['failed']} failed; "
                           f"best {spec.objective.metric} {results['bestMetric']:.4g}; registered "
                           f"{registered['name']} {registered['version']}")


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
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    raycluster.connect(ray_address)
    plan = schedulers.plan(spec)
    setup = {"spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True), "dataset": dataset,
             "cpu": spec.resources.cpu, "trainer": trainer_options()}
    trainable = tune.with_resources(tune.with_parameters(train_trial, setup=setup), trial_resources(spec))
    storage_path, name, fs = tune_location(store, run_key)
    path = posixpath.join(storage_path, name)
    live = Live(spec=spec, reporter=reporter, slots=spec.max_concurrent_trials)
    LIVE[run_key] = live
    started = time.monotonic()
    with scoped_env(TUNE_ENV):
        try:
            if tune.Tuner.can_restore(path, storage_filesystem=fs):
                tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                           restart_errored=False, param_space=plan.param_space, storage_filesystem=fs)
                resumed = True
            else:
                tuner = tune.Tuner(
                    trainable,
                    param_space=plan.param_space,
                    tune_config=tune.TuneConfig(
                        metric=spec.objective.metric, mode=schedulers.mode(spec), search_alg=plan.search_alg,
                        scheduler=plan.scheduler, num_samples=plan.num_samples,
                        time_budget_s=duration_seconds(spec.timeout), reuse_actors=True),
                    run_config=tune.RunConfig(
                        name=name, storage_path=storage_path, storage_filesystem=fs, verbose=0,
                        stop=Guard(run_key),
                        callbacks=[Watch(run_key), JsonLoggerCallback(), CSVLoggerCallback()],
                        failure_config=tune.FailureConfig(max_failures=spec.trial_retries),
                        # PBT clones other trials' checkpoints: Ray deletes kept-count checkpoints a clone still
                        # refers to (FileNotFoundError in its checkpoint manager), so PBT keeps them all
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=None if spec.algorithm.name == "pbt" else 2),
                        progress_reporter=None, log_to_file=False),
                )
                resumed = False
            grid = tuner.fit()
        finally:
            LIVE.pop(run_key, None)
    wall = time.monotonic() - started
    analysis = grid._experiment_analysis  # the Trial objects: status, config, error; with histories
    frames = analysis.trial_dataframes
    records = [record_of(t, history=frames.get(t.trial_id)) for t in analysis.trials]
    checkpoints = {}
    for result in grid:
        tid = (result.metrics or {}).get("trial_id")
        if tid and result.checkpoint is not None:
            checkpoints[tid] = result.checkpoint
    for t in analysis.trials:  # a trial stopped by stop_all may lack it in the ResultGrid
        if t.trial_id not in checkpoints and getattr(t, "checkpoint", None) is not None:
            checkpoints[t.trial_id] = t.checkpoint
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
        "targetReached": None if live.target is None else {"trial": live.target[0], "value": live.target[1]},
        "tuneState": (store.url(run_key.rsplit("/", 1)[0] + "/_tune/" + name)),
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
        _write_outputs(_InPlace(store, run_key), Tuned(best=best, **outcome_partial), resource,  # type: ignore[arg-type]
                       {**summary, "results": results})
        reporter.report(results=results)
        raise failure
    summary["bestTrial"] = {"id": best.id, "metric": best.last(metric), "parameters": best.config,
                            "metrics": _final_metrics(best, metric)}
    return Tuned(best=best, **outcome_partial)  # type: ignore[arg-type]


def trainer_options() -> dict[str, Any]:
    """Extra Trainer arguments: ``EARTHOPS_TRIAL_MAX_BATCHES`` caps the training and validation batches per
    epoch (benchmarks and tests on small budgets)."""
    cap = os.environ.get("EARTHOPS_TRIAL_MAX_BATCHES")
    if not cap:
        return {}
    return {"max_train_batches": int(cap), "max_val_batches": int(cap)}


def _final_metrics(record: rep.TrialRecord, metric: str) -> dict[str, float]:
    last = record.history[-1] if record.history else {}
    out = {metric: float(last[metric])} if metric in last else {}
    for k, v in last.items():
        if k not in out and k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) \
                and not (isinstance(v, float) and math.isnan(v)):
            out[k] = float(v)
    return out


class _InPlace:
    """The run folder written in place (a failed run: nothing is published)."""

    def __init__(self, store: Store, run_key: str):
        self.store, self.key = store, run_key.strip("/")

    def write_bytes(self, key: str, data: bytes) -> None:
        self.store.write_bytes(f"{self.key}/{key}", data)

    def write_json(self, key: str, obj: Any) -> None:
        self.store.write_json(f"{self.key}/{key}", obj)


def _write_outputs(target: Any, outcome: Tuned, resource: TuningExperiment, summary: dict[str, Any]) -> None:
    import pandas as pd

    from earthops_runtime.tuning import plots

    spec = resource.spec
    metric, goal, epochs = spec.objective.metric, spec.objective.goal, spec.training.epochs
    names = [p.name for p in spec.search_space]
    rows = rep.trials_table(outcome.records, names, metric, goal, epochs)
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
    )
    version = register_model(store, namespace=resource.namespace, name=name,
                             model=trainer.model, example_input=trainer.example_input(), card=card)
    return {"name": version.name, "version": version.version, "uri": version.uri}
