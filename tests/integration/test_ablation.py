"""AblationStudy runtime end to end on the session's local Ray (2 CPUs), on a known-truth dataset: the
signal feature ranks first with an interval excluding zero, the noise feature and the unneeded block get
intervals including zero, permutation importance agrees; outputs and replay; a driver killed mid-study
re-runs only the unfinished trials."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest

from earthops.api import parse_resource
from earthops.core.store import Store
from earthops_runtime.entrypoint import Reporter, Run
from tests.infra.drivers import driver, kill_once_finished
from tests.infra.known_truth import write_dataset

pytestmark = pytest.mark.integration



def study(name: str, **spec: Any) -> dict[str, Any]:
    base = {"datasetRef": {"name": "known-truth"}, "model": {"name": "tests.infra.known_truth:tiny"},
            "training": {"epochs": 3, "batchSize": 16, "learningRate": 0.01, "device": "cpu"},
            "components": {"features": ["signal", "noise"], "layers": ["extra"]},
            "objective": {"metric": "val_accuracy", "goal": "maximize"},
            "repeats": 3, "maxConcurrentTrials": 2, "permutationRepeats": 3, "resources": {"cpu": 1}}
    base.update(spec)
    return {"apiVersion": "earthops.dev/v1alpha1", "kind": "AblationStudy",
            "metadata": {"name": name, "namespace": "default", "generation": 1}, "spec": base}


@pytest.fixture(scope="module")
def known_truth(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_dataset(tmp_path_factory.mktemp("known-truth").as_uri())


def run_in_process(doc: dict[str, Any], store_uri: str, dataset: str, ray_local: Any, run_id: str = "g1-test"):
    from earthops_runtime.ablation import run

    store = Store.from_uri(store_uri)
    run_key = f"ablations/default/{doc['metadata']['name']}/{run_id}"
    reporter = Reporter(store, run_key, run_id, 1)
    run(Run(resource=parse_resource(doc, "test"), store=store, key=run_key, reporter=reporter,
            ray_address=ray_local.get_runtime_context().gcs_address, inputs={"dataset": dataset}))
    return reporter.status, store, run_key


def test_known_truth_ranks_the_signal_first_and_clears_noise_and_the_unneeded_block(tmp_path, ray_local, known_truth):
    status, store, run_key = run_in_process(study("known-truth"), tmp_path.as_uri(), known_truth, ray_local)
    assert status.phase == "Succeeded", status
    results = status.results
    assert (results["trialsTotal"], results["trialsDone"], results["trialsFailed"]) == (12, 12, 0)
    top = results["mostImportant"]
    assert top["component"] == "signal" and top["significant"] is True and top["ciHigh"] < 0
    assert results["baseMetric"] > 0.9
    table = pd.read_parquet(store.local_path(f"{run_key}/results.parquet")).set_index("component")
    assert table.loc["signal", "rank"] == 1 and table.loc["signal", "ci_high"] < 0
    for harmless in ("noise", "extra"):  # intervals that include zero
        row = table.loc[harmless]
        assert row["ci_low"] <= 0.0 <= row["ci_high"] and not row["significant"], row
    assert table.loc["signal", "p_holm"] < 0.05 and table.loc["noise", "p_holm"] >= 0.05
    # permutation importance of the base model agrees on the signal feature
    summary = store.read_json(f"{run_key}/summary.json")
    assert summary["agreement"]["topPermutation"] == "signal" and summary["agreement"]["sameTop"]
    assert summary["permutation"]["signal"]["importance"] > summary["permutation"]["noise"]["importance"]
    assert table.loc["signal", "permutation_importance"] > 0.2
    assert [r["component"] for r in summary["ranking"]][0] == "signal"
    # per-class deltas, trials, report, chart, STAC item, base model
    per_class = pd.read_parquet(store.local_path(f"{run_key}/per_class.parquet")).set_index("component")
    assert per_class.loc["signal"].lt(0).any()
    trials = pd.read_parquet(store.local_path(f"{run_key}/trials.parquet"))
    assert len(trials) == 12 and set(trials["state"]) == {"succeeded"} and set(trials["seed"]) == {0, 1, 2}
    page = store.read_bytes(f"{run_key}/report.html").decode()
    assert "data:image/png;base64," in page and "signal" in page and "<table>" in page
    assert store.read_bytes(f"{run_key}/plots/deltas.png")[:4] == b"\x89PNG"
    assert "| 1 | signal | feature | 3 |" in store.read_bytes(f"{run_key}/report.md").decode()
    item = store.read_json(f"{run_key}/item.json")
    assert item["properties"]["earthops:mostImportant"]["component"] == "signal"
    assert any(link["rel"] == "derived_from" for link in item["links"])
    assert store.exists(f"{run_key}/base_model/trainer.pt")
    assert results["report"] == store.url(f"{run_key}/report.html")
    live = store.read_json(f"{run_key}/status.json")
    assert {"component", "seed"} <= set(live["detail"]["trials"][0]["parameters"])
    # a rerun of the published generation replays it
    again, _, _ = run_in_process(study("known-truth"), tmp_path.as_uri(), known_truth, ray_local)
    assert again.phase == "Succeeded" and again.message == "already published"
    assert again.results["mostImportant"] == top


def test_one_repeat_says_no_interval_can_be_given(tmp_path, ray_local, known_truth):
    doc = study("one-repeat", repeats=1, permutationRepeats=0, components={"features": ["noise"]})
    status, store, run_key = run_in_process(doc, tmp_path.as_uri(), known_truth, ray_local)
    assert status.phase == "Succeeded", status
    assert "ciLow" not in status.results["mostImportant"]
    row = pd.read_parquet(store.local_path(f"{run_key}/results.parquet")).set_index("component").loc["noise"]
    assert pd.isna(row["ci_low"]) and "no confidence interval" in row["note"]
    assert "no confidence interval or p-value can be given" in store.read_bytes(f"{run_key}/report.md").decode()


def test_driver_killed_mid_study_reruns_only_unfinished_trials(tmp_path, ray_local, known_truth):
    doc = study("resume", training={"epochs": 4, "batchSize": 16, "learningRate": 0.01, "device": "cpu"},
                permutationRepeats=1)
    (tmp_path / "study.json").write_text(json.dumps(doc))
    run_key, store = "ablations/default/resume/g1-resume", tmp_path / "store"
    tune_dir = store / "ablations/default/resume/_tune/g1-resume"
    launch = {"entrypoint": "earthops_runtime.ablation:run", "resource": tmp_path / "study.json",
              "store_uri": store.as_uri(), "run_key": run_key, "inputs": {"dataset": known_truth},
              "address": ray_local.get_runtime_context().gcs_address}
    first = driver(**launch, log=tmp_path / "first.log")
    before = set(kill_once_finished(first, tune_dir, 2, tmp_path / "first.log"))
    assert 2 <= len(before) < 12
    second = driver(**launch, log=tmp_path / "second.log")
    assert second.wait(timeout=400) == 0, (tmp_path / "second.log").read_text()[-5000:]
    store = Store.from_uri(store.as_uri())
    assert store.read_json(f"{run_key}/status.json")["phase"] == "Succeeded"
    summary = store.read_json(f"{run_key}/summary.json")
    assert summary["resumed"] is True and summary["trials"]["trialsDone"] == 12
    trials = pd.read_parquet(store.local_path(f"{run_key}/trials.parquet"))
    assert before <= set(trials["trial_id"]) and len(trials) == 12
    # the trials finished before the kill were not trained again: each reported its 4 epochs once
    reports: dict[str, list[int]] = {}
    for result in tune_dir.glob("*/result.json"):
        for line in result.read_text().splitlines():
            row = json.loads(line)
            reports.setdefault(row["trial_id"], []).append(int(row["epoch"]))
    for tid in before:
        assert reports[tid] == [1, 2, 3, 4], (tid, reports[tid])


def test_crashed_trials_within_the_budget_are_reported_and_beyond_it_fail_the_study(tmp_path, ray_local, known_truth):
    crash = {"modelVariants": [{"name": "crashing", "model": {"name": "tests.integration.crashing_models:factory",
                                                              "parameters": {"crash": 2}}}]}
    within = study("crash-within", repeats=2, permutationRepeats=0, components=crash, maxFailedTrials=2)
    status, store, run_key = run_in_process(within, tmp_path.as_uri(), known_truth, ray_local)
    assert status.phase == "Succeeded", status
    assert (status.results["trialsDone"], status.results["trialsFailed"]) == (4, 2)
    row = pd.read_parquet(store.local_path(f"{run_key}/results.parquet")).set_index("component").loc["crashing"]
    assert row["n"] == 0 and pd.isna(row["delta"]) and "no pair" in row["note"]
    trials = pd.read_parquet(store.local_path(f"{run_key}/trials.parquet"))
    assert trials.loc[trials["state"] == "failed", "error"].str.contains("deliberate crash while training").all()

    beyond = study("crash-beyond", repeats=2, permutationRepeats=0, components=crash, maxFailedTrials=1,
                   maxConcurrentTrials=1)
    status, store, run_key = run_in_process(beyond, tmp_path.as_uri(), known_truth, ray_local)
    assert status.phase == "Failed" and status.reason == "TooManyFailedTrials", status
    assert "crashing@" in status.message and not store.is_published(run_key)
    kept = pd.read_parquet(store.local_path(f"{run_key}/trials.parquet"))  # finished trials are never lost
    assert (kept["state"] == "succeeded").any() and (kept["state"] == "failed").sum() == 2
