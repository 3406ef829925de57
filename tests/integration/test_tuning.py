"""TuningExperiment runtime end to end on the session's local Ray (2 CPUs) and a small iceberg dataset:
searchers and schedulers, the failure budget, a bad objective, driver kill + resume, registration."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from earthops.api import parse_resource
from earthops.core.store import Store
from earthops_runtime.entrypoint import Reporter, Run
from tests.infra.drivers import driver, kill_once_finished

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = "earthops_runtime.tuning:run"
SPACE = [
    {"name": "model.kernelSize", "type": "discrete", "values": [3, 5]},
    {"name": "model.dropout", "type": "double", "min": 0.05, "max": 0.5},
    {"name": "training.learningRate", "type": "double", "min": 1e-4, "max": 1e-2, "scale": "log"},
]


def experiment(name: str, **spec: Any) -> dict[str, Any]:
    base = {
        "datasetRef": {"name": "iceberg-chips"},
        "model": {"name": "iceberg-cnn", "parameters": {"width": 0.25}},
        "training": {"epochs": 2, "batchSize": 32, "device": "cpu"},
        "searchSpace": SPACE,
        "objective": {"metric": "val_accuracy", "goal": "maximize"},
        "algorithm": {"name": "random", "seed": 1},
        "earlyStopping": {"name": "median", "minTrials": 2, "gracePeriod": 1},
        "maxTrials": 4, "maxConcurrentTrials": 2, "maxFailedTrials": 1,
        "resources": {"cpu": 1},
    }
    base.update(spec)
    return {"apiVersion": "earthops.dev/v1alpha1", "kind": "TuningExperiment",
            "metadata": {"name": name, "namespace": "default", "generation": 1}, "spec": base}


def run_in_process(doc: dict[str, Any], store_uri: str, dataset: str, ray_local: Any, run_id: str = "g1-test"):
    from earthops_runtime.tuning import run

    resource = parse_resource(doc, "test")
    store = Store.from_uri(store_uri)
    run_key = f"experiments/default/{resource.name}/{run_id}"
    reporter = Reporter(store, run_key, run_id, 1)
    started = time.monotonic()
    run(Run(resource=resource, store=store, key=run_key, reporter=reporter,
            ray_address=ray_local.get_runtime_context().gcs_address, inputs={"dataset": dataset}))
    return reporter.status, store, run_key, time.monotonic() - started


def table(store: Store, run_key: str) -> pd.DataFrame:
    return pd.read_parquet(store.local_path(f"{run_key}/trials.parquet"))


def check_outputs(store: Store, run_key: str, status: Any, n_trials: int,
                  names: tuple[str, ...] = tuple(p["name"] for p in SPACE)) -> dict[str, Any]:
    assert status.phase == "Succeeded", status
    assert store.is_published(run_key)
    trials = table(store, run_key)
    assert len(trials) == n_trials
    assert set(trials["state"]) <= {"succeeded", "stopped", "failed"}
    for col in ("trial_id", *names, "val_accuracy_best", "val_accuracy_last", "epochs", "duration_s", "error"):
        assert col in trials.columns
    csv = pd.read_csv(store.local_path(f"{run_key}/trials.csv"))
    assert list(csv["trial_id"]) == list(trials["trial_id"])
    history = pd.read_parquet(store.local_path(f"{run_key}/history.parquet"))
    assert {"trial_id", "epoch", "val_accuracy", "val_loss", "train_loss"} <= set(history.columns)
    # one row per epoch trained (a PBT trial that cloned another continues from the other's epoch)
    assert len(history) <= int(trials["epochs"].sum())
    for tid, rows in history.groupby("trial_id"):
        assert rows["epoch"].is_unique and rows["epoch"].max() == int(trials.loc[trials["trial_id"] == tid, "epochs"].iloc[0])
    for png in ("plots/learning_curves.png", "plots/parameter_importance.png"):
        assert store.read_bytes(f"{run_key}/{png}")[:4] == b"\x89PNG"
    summary = store.read_json(f"{run_key}/summary.json")
    results = status.results
    assert results["trials"]["succeeded"] + results["trials"]["stopped"] + results["trials"]["failed"] == n_trials
    best = results["bestTrial"]
    assert best["id"] in set(trials["trial_id"]) and results["bestMetric"] == best["metric"]
    assert all(isinstance(v, str) for v in best["parameters"].values())
    assert summary["bestTrial"]["id"] == best["id"]
    assert 0 < summary["workerUtilisation"] <= 1.0
    reg = results["registeredModel"]
    assert reg["version"] == "v1" and store.exists(f"models/default/{reg['name']}/v1/item.json")
    item = store.read_json(f"models/default/{reg['name']}/v1/item.json")
    assert json.dumps(item).count(best["id"]) >= 1  # the experiment link names the trial
    assert results["report"] == store.url(run_key)
    # the final detail (the trial table `earthops run` ends with) is the trials file's rows, whatever the algorithm
    final = store.read_json(f"{run_key}/status.json")["detail"]
    assert final["objective"] == {"metric": "val_accuracy", "goal": "maximize", "value": "last",
                                  "column": "val_accuracy_last", "ranks": True}
    shown = {t["id"]: t for t in final["trials"]}
    assert list(shown) == list(trials["trial_id"])
    for _, row in trials.iterrows():
        t = shown[row["trial_id"]]
        assert (t["state"], t["epochs"]) == (row["state"], row["epochs"])
        assert t["objective"] == pytest.approx(row["val_accuracy_last"], nan_ok=True)
    return summary


def test_random_median_end_to_end_registers_the_best_model(tmp_path, ray_local, iceberg_dataset):
    doc = experiment("iceberg-median", maxTrials=5, modelName="iceberg-best")
    status, store, run_key, seconds = run_in_process(doc, tmp_path.as_uri(), iceberg_dataset.run_uri, ray_local)
    summary = check_outputs(store, run_key, status, 5)
    assert summary["scheduler"].startswith("median") and summary["searcher"] == "random"
    assert status.results["registeredModel"]["name"] == "iceberg-best"
    from earthops_runtime.registry import load_model

    model, item = load_model(store, "default", "iceberg-best")
    assert model is not None and item["id"].startswith("iceberg-best")
    best = status.results["bestTrial"]["parameters"]
    hyper = item["properties"]["mlm:hyperparameters"]
    assert not any(k.startswith(("training.", "model.")) for k in hyper), hyper  # each setting once
    assert f"{hyper['learningRate']:.6g}" == best["training.learningRate"]
    assert item["properties"]["earthops:parameters"]["kernelSize"] == int(best["model.kernelSize"])
    # a rerun of the published generation reports what it published and runs nothing
    published = {p: p.stat().st_mtime_ns for p in store.local_path(run_key).rglob("*")
                 if p.is_file() and p.name != "status.json"}  # status.json is the reporter's, rewritten
    status2, _, _, _ = run_in_process(doc, tmp_path.as_uri(), iceberg_dataset.run_uri, ray_local)
    assert status2.phase == "Succeeded" and status2.message == "already published"
    assert status2.results["bestTrial"] == status.results["bestTrial"]
    assert {p: p.stat().st_mtime_ns for p in published} == published, "the replay rewrote the published run"
    # a driver that died after registering but before publishing: the rerun restores the finished trials
    # from Tune's state and finds the version it registered instead of registering a second one
    store.delete(run_key)
    status3, _, _, _ = run_in_process(doc, tmp_path.as_uri(), iceberg_dataset.run_uri, ray_local)
    assert status3.phase == "Succeeded" and store.is_published(run_key)
    assert status3.results["registeredModel"] == status.results["registeredModel"]
    from earthops.core.registry import list_models

    assert [row["version"] for row in list_models(store, "default", "iceberg-best")] == ["v1"]
    print(f"random+median 5 trials x 2 epochs: {seconds:.1f} s, utilisation {summary['workerUtilisation']}")


def test_tpe_asha(tmp_path, ray_local, iceberg_dataset):
    doc = experiment("iceberg-asha", algorithm={"name": "tpe", "seed": 2},
                     earlyStopping={"name": "asha", "gracePeriod": 1, "reductionFactor": 2})
    status, store, run_key, seconds = run_in_process(doc, tmp_path.as_uri(), iceberg_dataset.run_uri, ray_local)
    summary = check_outputs(store, run_key, status, 4)
    assert summary["searcher"].startswith("tpe") and summary["scheduler"].startswith("asha")
    print(f"tpe+asha 4 trials: {seconds:.1f} s")


def test_grid_covers_the_grid_capped_by_max_trials(tmp_path, ray_local, iceberg_dataset):
    doc = experiment("iceberg-grid", algorithm={"name": "grid"}, earlyStopping={"name": "none"}, maxTrials=3,
                     training={"epochs": 1, "batchSize": 32, "device": "cpu"},
                     searchSpace=[{"name": "model.kernelSize", "type": "discrete", "values": [3, 5]},
                                  {"name": "training.learningRate", "type": "double", "min": 0.001, "max": 0.002,
                                   "step": 0.001}])
    status, store, run_key, _ = run_in_process(doc, tmp_path.as_uri(), iceberg_dataset.run_uri, ray_local)
    check_outputs(store, run_key, status, 3, ("model.kernelSize", "training.learningRate"))
    got = table(store, run_key)[["model.kernelSize", "training.learningRate"]].to_records(index=False).tolist()
    assert sorted(got) == [(3, 0.001), (3, 0.002), (5, 0.001)]
    assert set(table(store, run_key)["state"]) == {"succeeded"}


def test_unknown_objective_metric_fails_at_the_first_report(tmp_path, ray_local, iceberg_dataset):
    doc = experiment("iceberg-badmetric", objective={"metric": "val_auc", "goal": "maximize"}, maxTrials=6,
                     training={"epochs": 5, "batchSize": 32, "device": "cpu"})
    status, store, run_key, seconds = run_in_process(doc, tmp_path.as_uri(), iceberg_dataset.run_uri, ray_local)
    assert status.phase == "Failed" and status.reason == "UnknownMetric", status
    assert "'val_auc'" in status.message and "val_accuracy" in status.message and "val_loss" in status.message
    assert not store.is_published(run_key)
    trials = table(store, run_key)  # written beside status.json
    assert len(trials) <= 2 and (trials["epochs"] <= 1).all()  # no trial ran past its first epoch
    print(f"UnknownMetric after {seconds:.1f} s")


def test_crashing_trials_within_budget_are_recorded(tmp_path, ray_local, iceberg_dataset):
    doc = experiment("iceberg-crash", model={"name": "tests.integration.crashing_models:factory"},
                     algorithm={"name": "grid"}, earlyStopping={"name": "none"}, maxFailedTrials=2, maxTrials=4,
                     training={"epochs": 1, "batchSize": 32, "device": "cpu"},
                     searchSpace=[{"name": "model.crash", "type": "discrete", "values": [0, 1, 2, 0]}])
    status, store, run_key, _ = run_in_process(doc, tmp_path.as_uri(), iceberg_dataset.run_uri, ray_local)
    assert status.phase == "Succeeded", status
    trials = table(store, run_key)
    assert sorted(trials["state"]) == ["failed", "failed", "succeeded", "succeeded"]
    errors = set(trials.loc[trials["state"] == "failed", "error"])
    assert any("crash while building" in e for e in errors) and any("crash while training" in e for e in errors)
    assert status.results["trials"]["failed"] == 2


def test_crashing_trials_beyond_budget_fail_the_experiment_and_keep_the_table(tmp_path, ray_local, iceberg_dataset):
    # grid points in order (crash slowest): (0,0) succeeds, (0,1) runs out of memory, (2,0) crashes while
    # training -> 2 failed > maxFailedTrials 1: the experiment stops before (2,1); one at a time, one retry each
    doc = experiment("iceberg-crash2", model={"name": "tests.integration.crashing_models:factory"},
                     algorithm={"name": "grid"}, earlyStopping={"name": "none"}, maxFailedTrials=1, maxTrials=4,
                     maxConcurrentTrials=1, trialRetries=1,
                     training={"epochs": 1, "batchSize": 32, "device": "cpu"},
                     searchSpace=[{"name": "model.crash", "type": "discrete", "values": [0, 2]},
                                  {"name": "model.oom", "type": "discrete", "values": [0, 1]}])
    status, store, run_key, _ = run_in_process(doc, tmp_path.as_uri(), iceberg_dataset.run_uri, ray_local)
    assert status.phase == "Failed" and status.reason == "TooManyFailedTrials", status
    assert "OutOfMemory" in status.message and "crash while training" in status.message
    trials = table(store, run_key)
    assert (trials["state"] == "succeeded").sum() == 1  # the completed trial is kept
    assert (trials["state"] == "failed").sum() == 2 and len(trials) == 3  # the 4th never started
    assert not store.is_published(run_key)


def test_pbt(tmp_path, ray_local, iceberg_dataset):
    doc = experiment("iceberg-pbt", algorithm={"name": "pbt", "seed": 1}, training={"epochs": 3, "batchSize": 32,
                                                                                    "device": "cpu"},
                     earlyStopping={"gracePeriod": 1})
    status, store, run_key, _ = run_in_process(doc, tmp_path.as_uri(), iceberg_dataset.run_uri, ray_local)
    summary = check_outputs(store, run_key, status, 4)
    assert summary["scheduler"] == "pbt (from the algorithm)"
    assert set(table(store, run_key)["state"]) == {"succeeded"}  # PBT exploits, it does not stop trials


def test_driver_killed_mid_experiment_resumes_without_rerunning_finished_trials(tmp_path, ray_local, iceberg_dataset):
    doc = experiment("iceberg-resume", maxTrials=6, earlyStopping={"name": "none"},
                     training={"epochs": 2, "batchSize": 32, "device": "cpu"})
    resource = tmp_path / "exp.json"
    resource.write_text(json.dumps(doc))
    store_uri = (tmp_path / "store").as_uri()
    run_key = "experiments/default/iceberg-resume/g1-resume"
    address = ray_local.get_runtime_context().gcs_address
    tune_dir = tmp_path / "store" / "experiments/default/iceberg-resume/_tune/g1-resume"
    first = driver(ENTRYPOINT, resource, store_uri, run_key, {"dataset": iceberg_dataset.run_uri}, address,
                   tmp_path / "first.log")
    before = kill_once_finished(first, tune_dir, 2, tmp_path / "first.log")
    assert 2 <= len(before) < 6
    second = driver(ENTRYPOINT, resource, store_uri, run_key, {"dataset": iceberg_dataset.run_uri}, address,
                    tmp_path / "second.log")
    assert second.wait(timeout=400) == 0, (tmp_path / "second.log").read_text()[-5000:]
    store = Store.from_uri(store_uri)
    status = store.read_json(f"{run_key}/status.json")
    assert status["phase"] == "Succeeded"
    trials = table(store, run_key)
    assert len(trials) == 6 and set(trials["state"]) == {"succeeded"}
    history = pd.read_parquet(store.local_path(f"{run_key}/history.parquet"))
    for tid in before:
        # the finished trial is in the table with its own results, trained once: two epochs, not four
        assert tid in set(trials["trial_id"])
        assert sorted(history.loc[history["trial_id"] == tid, "epoch"]) == [1, 2]
    summary = store.read_json(f"{run_key}/summary.json")
    assert summary["resumed"] is True


def test_objective_target_stops_the_experiment(tmp_path, ray_local, iceberg_dataset):
    # any accuracy >= 0 reaches the target: the first report ends the search, and it still succeeds
    doc = experiment("iceberg-target", maxTrials=6, objective={"metric": "val_accuracy", "goal": "maximize",
                                                               "target": 0.0},
                     training={"epochs": 4, "batchSize": 32, "device": "cpu"})
    status, store, run_key, _ = run_in_process(doc, tmp_path.as_uri(), iceberg_dataset.run_uri, ray_local)
    assert status.phase == "Succeeded", status
    trials = table(store, run_key)
    assert len(trials) <= 2 and (trials["epochs"] < 4).all()
    summary = store.read_json(f"{run_key}/summary.json")
    assert summary["targetReached"]["value"] >= 0.0


@pytest.mark.parametrize("algorithm", ["hyperband", "bohb", "bayesian"])
def test_other_algorithms_run(tmp_path, ray_local, iceberg_dataset, algorithm):
    doc = experiment(f"iceberg-{algorithm}", algorithm={"name": algorithm, "seed": 4}, maxTrials=4,
                     training={"epochs": 3, "batchSize": 32, "device": "cpu"},
                     earlyStopping={"reductionFactor": 3})
    status, store, run_key, _ = run_in_process(doc, tmp_path.as_uri(), iceberg_dataset.run_uri, ray_local)
    summary = check_outputs(store, run_key, status, 4)
    assert algorithm in summary["searcher"] + summary["scheduler"]


def test_an_experiment_in_an_s3_store_keeps_tune_state_checkpoints_report_and_model_there(
        s3_env, s3_bucket, iceberg_dataset, ray_local):
    """Cluster mode keeps everything in S3: Ray Tune's state and checkpoints go through a pyarrow
    filesystem over the store's s3fs, the report is published there and the model registered there."""
    from earthops_runtime.registry import load_model

    doc = experiment("s3-tuning", maxTrials=2, earlyStopping={"name": "none"})
    status, store, run_key, _ = run_in_process(doc, f"s3://{s3_bucket}/earthops", iceberg_dataset.run_uri, ray_local)
    assert status.phase == "Succeeded", status
    assert store.uri.startswith("s3://") and store.is_published(run_key)
    assert {"trials.parquet", "trials.csv", "history.parquet", "summary.json"} <= {
        key.rsplit("/", 1)[-1] for key in store.list(run_key)}
    tune_files = store.list("experiments/default/s3-tuning/_tune/g1-test")
    assert any(key.endswith("trainer.pt") for key in tune_files), tune_files[:20]  # checkpoints in the bucket
    model = status.results["registeredModel"]
    module, item = load_model(store, "default", model["name"], model["version"])
    assert item["properties"]["mlm:architecture"] == "iceberg-cnn"
