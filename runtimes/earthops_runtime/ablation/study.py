"""The AblationStudy entrypoint: leave-one-component-out trials on Ray Tune, paired statistics, report.

Driver (this process): resolve the training settings (``training``, or the best trial of the
``fromTuning`` experiment, read from the model it registered), open the dataset, form the components
(:mod:`.plan`) and check every one against the dataset and the model before any trial (an unknown
feature, layer or prefix, a shape-breaking removal, no feature left: ``SpecError`` naming the
component), then run the base and every component with each seed as asynchronous trials on the shared
trial executor (:mod:`earthops_runtime.trials`: ``maxConcurrentTrials``, per-trial resources,
retries, the failure budget, Tune state in ``ablations/<ns>/<name>/_tune/<run-id>/`` so a restarted
driver re-runs only the unfinished trials), and publish the statistics (:mod:`.stats`) and the report
(:mod:`.report`) at the run key.

Trials (Ray actors): the one trainer (:mod:`earthops_runtime.training`) on the dataset without the
component's features (the model built for that many channels) or with the component's layers removed
(:mod:`.surgery`), seed = the training seed + repeat; each epoch reported with a checkpoint. The last
report adds per-class recall and F1 (classification) and, for base trials, the permutation importance
of every feature on the trained model.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

from earthops.api import AblationStudy
from earthops.api.ablation import AblationStudySpec
from earthops.api.common import duration_seconds
from earthops.api.tuning import Training
from earthops.core.store import Store, StoreError
from earthops_runtime.ablation import plan as pl
from earthops_runtime.ablation import stats
from earthops_runtime.entrypoint import SUMMARY_FILE, Outcome, Run, Runtime
from earthops_runtime.errors import RunFailed, SpecError
from earthops_runtime.trials import (
    InPlace,
    Live,
    metric_rows,
    run_trials,
    train_and_report,
    trainer_options,
    trial_error,
    trial_resources,
)

#: Prefixes of the extra metrics of a trial's last report.
PERMUTATION_KEY = "perm/"
CLASS_KEYS = ("class_recall/", "class_f1/")


# --- the trial ------------------------------------------------------------------------------------------


def _example(info: Any) -> Any:
    import torch

    return torch.zeros((2, info.in_channels, *info.chip_shape))


def _transform(layers: list[str], info: Any, field: str, model_name: str) -> Any:
    from earthops_runtime.ablation import surgery

    if not layers:
        return None
    return lambda model: surgery.remove(model, layers, example=_example(info), field=field, model_name=model_name)


def _validation(trainer: Any) -> list[tuple[Any, Any]]:
    from earthops_runtime.training.trainer import fill_nodata

    batches = trainer.val_loader if trainer.max_val_batches is None else itertools.islice(
        trainer.val_loader, trainer.max_val_batches)
    return [(fill_nodata(x.to(trainer.device)), y.to(trainer.device)) for x, y in batches]


def _evaluate(trainer: Any, batches: list[tuple[Any, Any]], channel: int | None = None, generator: Any = None
              ) -> tuple[dict[str, float], Any]:
    """Metrics of the trained model on ``batches`` (with ``channel`` shuffled across all chips when
    given) and the confusion counts."""
    import torch

    from earthops_runtime.training.metrics import MetricAccumulator

    ds = trainer.dataset
    if channel is not None:
        x_all = torch.cat([x for x, _ in batches])
        perm = torch.randperm(x_all.shape[0], generator=generator).to(x_all.device)
        shuffled = x_all[perm, channel]
        sizes = [x.shape[0] for x, _ in batches]
        pieces = torch.split(shuffled, sizes)
        batches = [(torch.cat([x[:, :channel], p.unsqueeze(1), x[:, channel + 1:]], 1), y)
                   for (x, y), p in zip(batches, pieces, strict=True)]
    trainer.model.eval()
    try:
        with torch.inference_mode():
            acc = MetricAccumulator(ds.task, ds.num_classes, trainer.device)
            for x, y in batches:
                acc.update(trainer.model(x).float(), y)
    finally:
        trainer.model.train()
    return acc.compute("val_"), acc.counts.cpu()


def final_metrics(trainer: Any, *, metric: str, goal: str, permutation_repeats: int, seed: int) -> dict[str, float]:
    """The last report's extras: per-class recall and F1 (classification), and for a base trial
    (``permutation_repeats`` > 0) each feature's permutation importance (mean objective loss when
    its values are shuffled across the validation chips)."""
    import torch

    ds = trainer.dataset
    batches = _validation(trainer)
    plain, counts = _evaluate(trainer, batches)
    out: dict[str, float] = {}
    if ds.task == "classification":
        cm = counts.double()
        tp = cm.diagonal()
        support, predicted = cm.sum(1), cm.sum(0)
        for k, name in enumerate(ds.classes):
            out[f"class_recall/{name}"] = float(tp[k] / support[k]) if support[k] else math.nan
            den = float(2 * tp[k] + (predicted[k] - tp[k]) + (support[k] - tp[k]))
            out[f"class_f1/{name}"] = float(2 * tp[k]) / den if den else math.nan
    if permutation_repeats > 0 and metric in plain:
        base_value = plain[metric]
        for c, feature in enumerate(ds.features):
            drops = []
            for r in range(permutation_repeats):
                g = torch.Generator().manual_seed(seed * 1000 + r)
                shuffled, _ = _evaluate(trainer, batches, channel=c, generator=g)
                drops.append(stats.importance_of(shuffled[metric] - base_value, goal))
            out[f"{PERMUTATION_KEY}{feature}"] = float(sum(drops) / len(drops))
    return out


def ablation_trial(config: dict[str, Any], *, setup: dict[str, Any]) -> None:
    """One trial (runs in a Ray actor): ``config["trial"]`` is ``<component>@<seed>``."""
    from earthops_runtime.training import DatasetInfo, Trainer

    name, seed = pl.split_trial(config["trial"])
    comp = setup["components"][name]
    metric, goal = setup["metric"], setup["goal"]
    training = Training.model_validate({**setup["training"], "seed": seed})
    model = comp["model"] or setup["model"]

    def build() -> Trainer:
        info = DatasetInfo.open(setup["dataset"], features=comp["kept"], field=comp["field"])
        return Trainer(info, model["name"], model["parameters"], training, threads=max(1, int(round(setup["cpu"]))),
                       model_transform=_transform(comp["layers"], info, comp["field"], model["name"]),
                       **setup.get("trainer", {}))

    def extras(trainer: Trainer) -> dict[str, float]:
        return final_metrics(trainer, metric=metric, goal=goal, seed=seed,
                             permutation_repeats=setup["permutation"] if name == pl.BASE else 0)

    train_and_report(build, epochs=training.epochs, metric=metric, batch_size=training.batch_size, last_extras=extras)


# --- the driver's view of the trials --------------------------------------------------------------------


def trial_row(trial: Trial, epochs: int, metric: str, history: Any = None) -> dict[str, Any]:
    """One trial as the study sees it: component, seed, state, objective (last epoch), extras, error."""
    rows = metric_rows(history, None if history is not None else trial.last_result)
    name, seed = pl.split_trial(trial.config["trial"])
    last = rows[-1] if rows else {}
    epoch = int(last.get("epoch") or 0)
    status = str(trial.status)
    state = {"ERROR": "failed", "RUNNING": "running", "PAUSED": "running", "PENDING": "pending"}.get(
        status, "succeeded" if epoch >= epochs else "stopped")
    value = last.get(metric)
    value = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    extras = {k: float(v) for k, v in last.items()
              if k.startswith((PERMUTATION_KEY, *CLASS_KEYS)) and isinstance(v, (int, float))}
    return {"trial_id": trial.trial_id, "trial": trial.config["trial"], "component": name, "seed": seed,
            "state": state, "objective": value if state == "succeeded" else None, "last": value, "epochs": epoch,
            "duration_s": round(float((trial.last_result or {}).get("time_total_s") or 0.0), 3),
            "error": _short(trial_error(trial)), "extras": extras}


def _counts(rows: list[dict[str, Any]], total: int) -> dict[str, int]:
    done = sum(1 for r in rows if r["state"] in ("succeeded", "stopped", "failed"))
    failed = sum(1 for r in rows if r["state"] == "failed")
    return {"trialsTotal": total, "trialsDone": done, "trialsFailed": failed}


def _on_update(live: Live, trials: list[Trial]) -> None:
    spec, epochs, total = live.spec["spec"], live.spec["epochs"], live.spec["total"]
    rows = [trial_row(t, epochs, spec.objective.metric) for t in trials]
    c = _counts(rows, total)
    running = sum(1 for r in rows if r["state"] == "running")
    live.reporter.report("Running", done=c["trialsDone"], total=total, unit="trials",
                         message=f"{c['trialsDone']}/{total} trials done ({running} running, {c['trialsFailed']} failed)",
                         results=c, detail=trials_detail(rows, spec, epochs))


def trials_detail(rows: list[dict[str, Any]], spec: AblationStudySpec, epochs: int) -> dict[str, Any]:
    """The runtime status's ``detail``: the live trial table (component and seed as its parameters)."""
    metric = spec.objective.metric
    return {
        "objective": {"metric": metric, "goal": spec.objective.goal, "value": "last"},
        "epochs": epochs,
        "trials": [{"id": r["trial_id"], "state": r["state"],
                    "parameters": {"component": r["component"], "seed": str(r["seed"])},
                    "objective": r["last"], "best": r["last"], "epochs": r["epochs"], "seconds": r["duration_s"],
                    "error": r["error"]} for r in rows if r["state"] != "pending"],
    }


def _short(text: str | None) -> str | None:
    """The exception line of a Ray error text (``RuntimeError: boom``), not the whole traceback."""
    if not text:
        return None
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if ":" in ln and head.endswith(("Error", "Exception", "OutOfMemory")):
            return ln[:500]
    return (lines[-1] if lines else str(text))[:500]


# --- settings -------------------------------------------------------------------------------------------


def resolve_settings(spec: AblationStudySpec, inputs: Any) -> tuple[Training, dict[str, Any], dict[str, Any] | None]:
    """(training, base model parameters, what came from the tuning experiment or None).

    With ``fromTuning`` the training settings are those the experiment's best trial trained with, and
    its tuned model arguments override ``spec.model.parameters`` when the architecture is the same; both
    are read from the model card it registered (``mlm:hyperparameters``, ``earthops:parameters``)."""
    if spec.training is not None:
        return spec.training, dict(spec.model.parameters), None
    assert spec.from_tuning is not None
    field, name = "spec.fromTuning", spec.from_tuning.name
    uri = inputs.get("tuning")
    if not uri:
        raise SpecError(field, f"no run of TuningExperiment {name!r} was given to the runtime (expected --input "
                               "tuning=<published run URI>; the experiment must have succeeded)",
                        reason="TuningExperimentNotReady")
    try:
        summary = Store.from_uri(uri).read_json(SUMMARY_FILE)
        results = summary.get("results") or {}
        registered = results.get("registeredModel") or {}
        trial = (results.get("bestTrial") or {}).get("id") or (summary.get("bestTrial") or {}).get("id")
        item = Store.from_uri(registered["uri"]).read_json("item.json")
    except (StoreError, KeyError, TypeError, FileNotFoundError) as exc:
        raise SpecError(field, f"TuningExperiment {name!r} at {uri} has no registered best model to take the "
                               f"settings from ({type(exc).__name__}: {exc})", reason="TuningExperimentUnusable") from None
    props = item.get("properties") or {}
    try:
        training = Training.model_validate(props.get("mlm:hyperparameters") or {})
    except ValueError as exc:
        raise SpecError(field, f"the best trial's training settings of {name!r} do not validate: {exc}") from None
    params = dict(spec.model.parameters)
    architecture = props.get("mlm:architecture")
    if architecture == spec.model.name:
        params.update(props.get("earthops:parameters") or {})
    source = {"experiment": name, "run": uri, "trial": trial, "model": registered.get("uri"),
              "modelName": registered.get("name"), "modelVersion": registered.get("version"),
              "architecture": architecture, "parameters": props.get("earthops:parameters") or {},
              "training": training.model_dump(mode="json", by_alias=True),
              "modelParametersApplied": architecture == spec.model.name}
    return training, params, source


# --- checks before any trial ----------------------------------------------------------------------------


def check_plan(spec: AblationStudySpec, info: Any, params: dict[str, Any]) -> list[pl.Component]:
    """The components, checked against the dataset and the model (see the module docstring)."""
    import torch

    from earthops_runtime.models.zoo import build_model
    from earthops_runtime.training.trainer import expected_output

    comps = pl.components(spec)
    pl.check_features(comps, info.features)
    dims = {"num_classes": info.num_classes, "task": info.task, "chip_shape": info.chip_shape}
    want = expected_output(info.task, 2, info.num_classes, info.chip_shape)

    def check(model: Any, field: str, channels: int = info.in_channels) -> None:
        model.eval()
        try:
            with torch.inference_mode():
                got = tuple(model(torch.zeros((2, channels, *info.chip_shape))).shape)
        except RuntimeError as exc:
            raise SpecError(field, f"the model fails on a batch of {channels}-channel chips: {exc}") from exc
        if got != want:
            raise SpecError(field, f"the model returns logits of shape {got}; the dataset needs {want}")

    base = build_model(spec.model.name, params, in_channels=info.in_channels, **dims)
    check(base, "spec.model.name")
    for comp in comps:
        if comp.features:
            kept = pl.kept_features(comp, info.features)
            check(build_model(spec.model.name, params, in_channels=len(kept), **dims), comp.field, len(kept))
        if comp.model is not None:
            try:
                variant = build_model(comp.model["name"], comp.model["parameters"], in_channels=info.in_channels, **dims)
            except SpecError as exc:
                raise SpecError(exc.field.replace("spec.model", f"{comp.field}.model", 1), exc.detail) from None
            check(variant, f"{comp.field}.model")
    return pl.resolve_layers(comps, base, example=torch.zeros((2, info.in_channels, *info.chip_shape)),
                             check=check, model_name=spec.model.name)


# --- the entrypoint -------------------------------------------------------------------------------------


def _run(run: Run) -> Outcome:
    """The AblationStudy's work (see the module docstring)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from earthops_runtime import raycluster
    from earthops_runtime.ablation import report as rp
    from earthops_runtime.training import DatasetInfo

    resource, store, reporter = run.resource, run.store, run.reporter
    spec: AblationStudySpec = resource.spec
    dataset = run.input("dataset", "spec.datasetRef", spec.dataset_ref.name)
    training, params, tuning = resolve_settings(spec, run.inputs)
    info = DatasetInfo.open(dataset)
    comps = check_plan(spec, info, params)
    seeds = [training.seed + i for i in range(spec.repeats)]
    trials = pl.trial_ids(comps, seeds)
    total = len(trials)
    base_tuning = {"tuningTrial": tuning["trial"]} if tuning and tuning.get("trial") else {}
    reporter.report(done=0, total=total, unit="trials", message=f"starting {total} trials "
                    f"({len(comps) - 1} components + base, {spec.repeats} seeds)",
                    results={"trialsTotal": total, "trialsDone": 0, "trialsFailed": 0, **base_tuning})
    setup = {
        "dataset": dataset, "metric": spec.objective.metric, "goal": spec.objective.goal,
        "training": training.model_dump(mode="json", by_alias=True),
        "model": {"name": spec.model.name, "parameters": params}, "cpu": spec.resources.cpu,
        "permutation": spec.permutation_repeats, "trainer": trainer_options(),
        "components": {c.name: {**c.to_dict(), "kept": pl.kept_features(c, info.features),
                                "layers": list(c.layers)} for c in comps},
    }
    raycluster.connect(run.ray_address)
    live = Live(metric=spec.objective.metric, goal=spec.objective.goal, max_failed=spec.max_failed_trials,
                on_update=_on_update, spec={"spec": spec, "epochs": training.epochs, "total": total},
                reporter=reporter, slots=spec.max_concurrent_trials)
    finished = run_trials(
        tune.with_parameters(ablation_trial, setup=setup), store=store, run_key=run.key, live=live,
        param_space={"trial": tune.grid_search(trials)},
        search_alg=BasicVariantGenerator(max_concurrent=spec.max_concurrent_trials), num_samples=1,
        time_budget_s=duration_seconds(spec.timeout), max_failures=spec.trial_retries,
        resources=trial_resources(spec.resources), keep_checkpoints=2)
    rows = [trial_row(t, training.epochs, spec.objective.metric, finished.histories.get(t.trial_id))
            for t in finished.trials]
    counts = _counts(rows, total)
    analysis = rp.analyse(rows, comps, spec, info)
    summary = {
        "objective": {"metric": spec.objective.metric, "goal": spec.objective.goal},
        "policy": spec.policy, "repeats": spec.repeats, "seeds": seeds,
        "components": [c.to_dict() for c in comps], "training": setup["training"],
        "model": setup["model"], "fromTuning": tuning, "dataset": dataset,
        "trials": counts, "maxConcurrentTrials": spec.max_concurrent_trials,
        "wallSeconds": round(finished.wall_seconds, 3),
        "trialSeconds": round(sum(r["duration_s"] for r in rows), 3),
        "resumed": finished.resumed, "tuneState": finished.tune_path,
    }
    failure: RunFailed | None = None
    if live.unknown_metric:
        failure = RunFailed("UnknownMetric", live.unknown_metric)
    elif counts["trialsFailed"] > spec.max_failed_trials:
        shown = "; ".join(f"{r['trial']}: {r['error']}" for r in rows if r["state"] == "failed")[:1500]
        failure = RunFailed("TooManyFailedTrials", f"{counts['trialsFailed']} trials failed, more than "
                                                   f"maxFailedTrials {spec.max_failed_trials}: {shown}")
    elif not analysis["base"]["n"]:
        failure = RunFailed("NoBaseTrials", f"no base trial finished with a value of {spec.objective.metric!r}")
    if failure is not None:
        summary["failure"] = {"reason": failure.reason, "message": str(failure)}
        rp.write_trials(InPlace(store, run.key), rows)
        InPlace(store, run.key).write_json(SUMMARY_FILE, summary)
        reporter.report(results=counts, detail=trials_detail(rows, spec, training.epochs))
        raise failure
    results: dict[str, Any] = {**counts, **base_tuning, "report": store.url(f"{run.key}/report.html")}
    if analysis["base"]["mean"] is not None:
        results["baseMetric"] = analysis["base"]["mean"]
    top = analysis["top"]
    if top is not None:
        results["mostImportant"] = top
    base_checkpoint = next((finished.checkpoints[r["trial_id"]] for r in rows
                            if r["component"] == pl.BASE and r["seed"] == seeds[0] and r["trial_id"] in finished.checkpoints),
                           None)
    with store.publish(run.key) as run_store:
        rp.write_outputs(run_store, resource, analysis, rows, {**summary, "results": results}, info=info,
                         tuning=tuning, store_url=store.url(run.key), base_checkpoint=base_checkpoint,
                         created=datetime.now(UTC))
    message = (f"{counts['trialsDone'] - counts['trialsFailed']} of {total} trials succeeded"
               f" ({counts['trialsFailed']} failed); base {spec.objective.metric} "
               f"{_fmt(analysis['base']['mean'])}")
    if top is not None:
        message += f"; most important: {top['component']} (delta {_fmt(top['delta'])})"
    return Outcome(results, message, done=counts["trialsDone"], total=total,
                   detail=trials_detail(rows, spec, training.epochs))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _replay(resource: AblationStudy, summary: dict[str, Any]) -> Outcome:
    results = summary["results"]
    return Outcome(results, "already published", done=results.get("trialsDone"), total=results.get("trialsTotal"))


#: The entrypoint (``earthops_runtime.ablation:run`` in ``earthops.api.KINDS``).
run = Runtime(unit="trials", body=_run, replay=_replay)
