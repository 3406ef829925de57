"""The one trial executor on Ray Tune, shared by the kinds that train many models (tuning, ablation).

:func:`run_trials` runs a trainable over a parameter space with the kind's searcher and scheduler:
asynchronous trials up to the searcher's concurrency, per-trial resources, retries, Ray Tune's state
and checkpoints in the store at ``<area>/<ns>/<name>/_tune/<run-id>/`` (a driver started again for the
same run restores it: finished trials are kept, unfinished ones continue from their last checkpoint),
and a :class:`Live` state the hooks read while it runs:

* :class:`Guard` (a Tune stopper) stops everything when a trial does not report the objective
  (``unknown_metric``), when a trial reaches the objective's target (after that trial completes), or
  when more trials failed than the failure budget allows;
* :class:`Watch` (a Tune callback) counts failed trials and calls the kind's ``on_update`` about once a
  second (forced on a trial's completion or error), which reports the status.

Callbacks and stoppers are pickled by Ray Tune into the experiment state and unpickled on restore; so
they hold no driver objects, only the run key under which the live driver registers its :class:`Live`
(:data:`LIVE`). Trainables report :data:`UNKNOWN_METRIC_KEY` when the objective is missing from their
metrics, and raise :class:`TrialOutOfMemory` for a trial out of (GPU) memory.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs
from ray import tune
from ray.tune.experiment import Trial

from earthops.api.common import TrialResources, quantity_value
from earthops.core.store import Store
from earthops_runtime.errors import SpecError

#: Key a trainable adds when the objective metric is missing from its metrics (their names, joined).
UNKNOWN_METRIC_KEY = "earthops_reported_metrics"
#: Seconds between two status reports while trials run.
REPORT_INTERVAL_S = 1.0
#: Ray's own result keys: not metrics of the trial.
RAY_KEYS = frozenset({
    "timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "date",
    "done", "trial_id", "iterations_since_restore", "time_since_restore", "checkpoint_dir_name", "should_checkpoint",
    "experiment_tag", "config", UNKNOWN_METRIC_KEY,
})
#: Ray Tune settings for the experiment's fit only (restored after, so the process's other Tune runs
#: keep Ray's defaults): the Guard names a missing objective itself; JSON and CSV results only (the
#: history comes from them; Tune's TensorBoard logger costs about half a second per trial on 2 cores);
#: no warning about checkpoint syncs, which are per epoch on purpose; the experiment state is saved at
#: most once a second (Tune's default waits up to 10 s; at every step it cost 60 % of the driver's CPU,
#: taken from the trials), and Tune saves it anyway as soon as a trial has written `num_to_keep`
#: checkpoints since the last save, so a driver killed between two saves never resumes from a state
#: naming a checkpoint that `num_to_keep` has deleted since (seen with epochs of milliseconds on a
#: loaded machine before ablation kept two checkpoints per trial).
TUNE_ENV = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
            "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0", "TUNE_GLOBAL_CHECKPOINT_S": "1"}


class TrialOutOfMemory(RuntimeError):
    """A trial ran out of (GPU) memory: a failed trial like any crash, with a clear message."""


# --- the driver's live state, and the Tune hooks that read it -------------------------------------------


@dataclass
class Live:
    """What the driver knows while Tune runs (looked up by run key from the pickled hooks).

    ``spec`` and ``reporter`` are the kind's, for its ``on_update(live, trials)``."""

    metric: str
    goal: str
    max_failed: int
    on_update: Callable[[Live, list[Trial]], None]
    spec: Any = None
    reporter: Any = None
    slots: int = 1
    target: float | None = None
    unknown_metric: str | None = None
    target_reached: tuple[str, float] | None = None
    target_pending: tuple[str, float] | None = None
    failed: int = 0
    too_many_failed: bool = False
    last_report: float = 0.0
    #: seconds each trial trained in this driver's lifetime (``time_since_restore``): utilisation
    busy: dict[str, float] = field(default_factory=dict)

    @property
    def stop_all(self) -> bool:
        return bool(self.unknown_metric or self.too_many_failed or self.target_reached)


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
        metric = live.metric
        if UNKNOWN_METRIC_KEY in result and metric not in result:
            reported = [m for m in str(result[UNKNOWN_METRIC_KEY]).split(",") if m]
            live.unknown_metric = (f"spec.objective.metric: the trainer never reports {metric!r}; it reports: "
                                   f"{', '.join(reported)} (first report of trial {trial_id})")
            return True
        value = result.get(metric)
        if live.target is not None and value is not None and not math.isnan(float(value)):
            reached = value <= live.target if live.goal == "minimize" else value >= live.target
            if reached and live.target_reached is None:
                # stop this trial now; everything else once it has completed (Watch), so its last
                # checkpoint is kept before the experiment stops
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
        if live.failed > live.max_failed:
            live.too_many_failed = True
        now = time.monotonic()
        if force or now - live.last_report >= REPORT_INTERVAL_S:
            live.last_report = now
            live.on_update(live, trials)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        live = LIVE.get(self.key)
        if live is not None and "time_since_restore" in result:
            live.busy[trial.trial_id] = float(result["time_since_restore"])
        self._update(trials)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        live = LIVE.get(self.key)
        if live is not None and live.target_pending and live.target_pending[0] == trial.trial_id:
            live.target_reached = live.target_pending
        self._update(trials, force=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._update(trials, force=True)

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        self._update(trials)


# --- the trial -----------------------------------------------------------------------------------------


def train_and_report(build: Callable[[], Any], *, epochs: int, metric: str, batch_size: int,
                     last_extras: Callable[[Any], dict[str, float]] | None = None) -> None:
    """The body of a trial (in a Ray actor): build the trainer, continue from Tune's checkpoint when
    there is one (a retry, PBT's exploit, a resumed experiment; the trainer keeps its own learning
    rate, so PBT's mutation holds), train epoch by epoch and report each epoch with a checkpoint;
    ``last_extras(trainer)`` adds metrics to the last epoch's report. A trial whose metrics lack
    ``metric`` reports :data:`UNKNOWN_METRIC_KEY` once and ends; one out of memory raises
    :class:`TrialOutOfMemory`."""
    import tempfile

    import torch

    trainer = None
    try:
        trainer = build()
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                trainer.load_checkpoint(d)
        while trainer.epoch < epochs:
            metrics = trainer.train_epoch()
            out: dict[str, Any] = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            out["epoch"] = int(trainer.epoch)
            if metric not in out:
                out[UNKNOWN_METRIC_KEY] = ",".join(sorted(k for k in metrics if k != "epoch"))
            elif last_extras is not None and trainer.epoch >= epochs:
                out.update(last_extras(trainer))
            with tempfile.TemporaryDirectory(prefix="earthops-ckpt-") as d:
                trainer.save_checkpoint(d)
                tune.report(out, checkpoint=tune.Checkpoint.from_directory(d))
            if metric not in out:
                return
    except torch.OutOfMemoryError as exc:
        raise TrialOutOfMemory(f"OutOfMemory: the trial ran out of memory on {getattr(trainer, 'device', '?')} "
                               f"(batchSize {batch_size}): {str(exc).splitlines()[0][:200]}") from None


# --- helpers -------------------------------------------------------------------------------------------


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


def trial_resources(resources: TrialResources) -> dict[str, float]:
    """Ray resources of one trial from ``spec.resources`` (CPU, GPU, memory in bytes)."""
    res: dict[str, float] = {"cpu": float(resources.cpu), "gpu": float(resources.gpu)}
    try:
        memory = quantity_value(resources.memory)
    except ValueError as exc:
        raise SpecError("spec.resources.memory", str(exc)) from None
    if memory:
        res["memory"] = memory
    return res


def tune_location(store: Store, run_key: str) -> tuple[str, str, Any]:
    """(storage path, experiment name, pyarrow filesystem or None) of the run's Ray Tune state:
    ``<store>/<area>/<ns>/<name>/_tune/<run-id>``."""
    parts = run_key.strip("/").split("/")
    if len(parts) < 2:
        raise ValueError(f"run key {run_key!r}: expected <area>/<ns>/<name>/<run-id>")
    tune_key = "/".join([*parts[:-1], "_tune"])
    run_id = parts[-1]
    if store.is_local:
        path = store.local_path(tune_key)
        path.mkdir(parents=True, exist_ok=True)
        return str(path), run_id, None
    fs = pyarrow.fs.PyFileSystem(StoreHandler(store.uri))
    return store.url(tune_key).split("://", 1)[1], run_id, fs


#: Namespace of Ray's internal key-value store where a driver leaves its store credentials for the
#: processes of its trials (:class:`StoreHandler`).
CREDENTIALS_NAMESPACE = "earthops-store-credentials"


class StoreHandler(pyarrow.fs.FSSpecHandler):
    """pyarrow's handler of the store's fsspec filesystem that never pickles a credential.

    Ray Tune pickles its storage filesystem into its state files in the store (the searcher's state,
    the trials) and into every trial: an s3fs filesystem pickles with its key and secret, which then
    lay in the bucket. This one pickles as the store URI and a reference: each process opens the store
    with the driver's credentials, which the driver left in the Ray cluster's internal key-value store
    under that reference (Ray's own memory, never the store), or else with its own (the environment or
    the mounted Secret, as a RayJob's pods have them: a Tune state read by a later driver whose
    reference is gone)."""

    def __init__(self, uri: str, reference: str | None = None) -> None:
        self.uri = uri
        if reference is None:  # the driver
            reference = _share_credentials()
        self.reference = reference
        super().__init__(_open_store(uri, reference).fs)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return StoreHandler, (self.uri, self.reference)


def _share_credentials() -> str:
    import ray
    from ray.experimental import internal_kv

    from earthops.core.store import credentials

    creds = credentials()
    if not creds or not ray.is_initialized():
        return ""
    reference = uuid.uuid4().hex
    internal_kv._internal_kv_put(reference, json.dumps(creds).encode(), namespace=CREDENTIALS_NAMESPACE)
    # gone with the driver (a long-lived Ray cluster would otherwise keep every driver's credentials);
    # registered after Ray's own exit handler (at Ray's import), so it runs first, while Ray is connected
    atexit.register(_forget_credentials, reference)
    return reference


def _forget_credentials(reference: str) -> None:
    """Delete the credentials a driver left in Ray (at its exit; a driver that is killed leaves them
    until the cluster goes, and a RayJob's cluster goes with its job)."""
    import ray
    from ray.experimental import internal_kv

    if ray.is_initialized():
        with contextlib.suppress(Exception):  # Ray going down: nothing left to clean
            internal_kv._internal_kv_del(reference, namespace=CREDENTIALS_NAMESPACE)


def _open_store(uri: str, reference: str) -> Store:
    """The driver's credentials where it left them, else this process's own."""
    import ray
    from ray.experimental import internal_kv

    if reference and ray.is_initialized():
        shared = internal_kv._internal_kv_get(reference, namespace=CREDENTIALS_NAMESPACE)
        if shared:
            return Store.from_uri(uri, env=json.loads(shared))
    return Store.from_uri(uri)


def trainer_options() -> dict[str, Any]:
    """Extra Trainer arguments: ``EARTHOPS_TRIAL_MAX_BATCHES`` caps the training and validation batches per
    epoch (benchmarks and tests on small budgets)."""
    cap = os.environ.get("EARTHOPS_TRIAL_MAX_BATCHES")
    if not cap:
        return {}
    return {"max_train_batches": int(cap), "max_val_batches": int(cap)}


def trial_error(trial: Trial) -> str | None:
    """The error text of a failed trial (None for a trial that did not fail)."""
    if trial.status != Trial.ERROR:
        return None
    try:
        err = trial.get_error()
        return str(err) if err is not None else "the trial failed"
    except Exception:  # noqa: BLE001 - the error file may be gone; say something rather than nothing
        return "the trial failed (no error text)"


def metric_rows(history: Any = None, last_result: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """A trial's reported metrics, one dict per report, without Ray's keys: from its results dataframe
    when read, else (while running) its last result."""
    if history is not None and len(history):
        return [{k: v for k, v in row.items() if k not in RAY_KEYS and not k.startswith("config/")}
                for row in history.to_dict("records")]
    if last_result and "epoch" in last_result:
        return [{k: v for k, v in last_result.items() if k not in RAY_KEYS}]
    return []


class InPlace:
    """A run folder written in place (a failed run: nothing is published), with the writer methods of a
    publishing store."""

    def __init__(self, store: Store, run_key: str):
        self.store, self.key = store, run_key.strip("/")

    def write_bytes(self, key: str, data: bytes) -> None:
        self.store.write_bytes(f"{self.key}/{key}", data)

    def write_json(self, key: str, obj: Any) -> None:
        self.store.write_json(f"{self.key}/{key}", obj)


# --- running -------------------------------------------------------------------------------------------


@dataclass
class Finished:
    """What Ray Tune left: every trial, their result histories, their last checkpoints."""

    trials: list[Trial]
    histories: dict[str, Any]
    checkpoints: dict[str, Any]
    resumed: bool
    wall_seconds: float
    tune_path: str


def run_trials(trainable: Any, *, store: Store, run_key: str, live: Live, param_space: dict[str, Any] | None,
               search_alg: Any, scheduler: Any = None, num_samples: int = 1, time_budget_s: float | None = None,
               max_failures: int = 0, keep_checkpoints: int | None = 2, resources: dict[str, float] | None = None
               ) -> Finished:
    """Run (or resume) the trials of ``run_key`` on Ray Tune; see the module docstring. ``live`` is
    registered for the hooks while Tune runs."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    if resources is not None:
        trainable = tune.with_resources(trainable, resources)
    storage_path, name, fs = tune_location(store, run_key)
    path = posixpath.join(storage_path, name)
    LIVE[run_key] = live
    started = time.monotonic()
    with scoped_env(TUNE_ENV):
        try:
            if tune.Tuner.can_restore(path, storage_filesystem=fs):
                tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                           restart_errored=False, param_space=param_space, storage_filesystem=fs)
                resumed = True
            else:
                tuner = tune.Tuner(
                    trainable,
                    param_space=param_space,
                    tune_config=tune.TuneConfig(
                        metric=live.metric, mode="min" if live.goal == "minimize" else "max", search_alg=search_alg,
                        scheduler=scheduler, num_samples=num_samples, time_budget_s=time_budget_s, reuse_actors=True),
                    run_config=tune.RunConfig(
                        name=name, storage_path=storage_path, storage_filesystem=fs, verbose=0,
                        stop=Guard(run_key),
                        callbacks=[Watch(run_key), JsonLoggerCallback(), CSVLoggerCallback()],
                        failure_config=tune.FailureConfig(max_failures=max_failures),
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints),
                        progress_reporter=None, log_to_file=False),
                )
                resumed = False
            grid = tuner.fit()
        finally:
            LIVE.pop(run_key, None)
    wall = time.monotonic() - started
    analysis = grid._experiment_analysis  # the Trial objects: status, config, error; with histories
    checkpoints: dict[str, Any] = {}
    for result in grid:
        tid = (result.metrics or {}).get("trial_id")
        if tid and result.checkpoint is not None:
            checkpoints[tid] = result.checkpoint
    for t in analysis.trials:  # a trial stopped by stop_all may lack it in the ResultGrid
        if t.trial_id not in checkpoints and getattr(t, "checkpoint", None) is not None:
            checkpoints[t.trial_id] = t.checkpoint
    return Finished(trials=list(analysis.trials), histories=dict(analysis.trial_dataframes), checkpoints=checkpoints,
                    resumed=resumed, wall_seconds=wall, tune_path=store.url(run_key.rsplit("/", 1)[0] + "/_tune/" + name))


__all__ = ["LIVE", "RAY_KEYS", "TUNE_ENV", "UNKNOWN_METRIC_KEY", "Finished", "Guard", "InPlace", "Live",
           "TrialOutOfMemory", "Watch", "metric_rows", "run_trials", "scoped_env", "train_and_report", "trainer_options",
           "trial_error", "trial_resources", "tune_location"]
