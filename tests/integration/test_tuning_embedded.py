"""The ship/iceberg example experiment end to end in embedded mode, through the command line a user
types: `earthops run -f` (dataset Ready, experiment, registered model), `get`, `get models`, `search`."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.infra.pytest_datasets import example

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, store: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EARTHOPS_STORE": store, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "earthops.control.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def test_example_experiment_runs_embedded_and_registers_its_best_model(tmp_path, iceberg_dataset, ray_local):
    # the example as shipped, made small: the test dataset, a quarter-width model, fewer trials and epochs
    doc = example("examples/ship-iceberg/02-tuning.yaml", **{
        "spec.model.parameters.width": 0.25, "spec.training.epochs": 2, "spec.maxTrials": 4,
        "spec.earlyStopping.gracePeriod": 1, "spec.earlyStopping.minTrials": 2})
    assert doc["spec"]["datasetRef"]["name"] == iceberg_dataset.name  # the example's own reference
    manifest = tmp_path / "tuning.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    address = ray_local.get_runtime_context().gcs_address

    run = _cli("run", "-f", str(manifest), "--ray-address", address, store=iceberg_dataset.store_uri)
    assert run.returncode == 0, run.stdout + run.stderr

    got = json.loads(_cli("get", "tex", "iceberg-tuning", "-o", "json", store=iceberg_dataset.store_uri).stdout)
    status = got["status"]
    assert status["phase"] == "Succeeded", status
    trials = status["trials"]
    assert trials["succeeded"] + trials["stopped"] + trials["failed"] == 4 and trials["failed"] == 0
    assert 0.0 <= status["bestMetric"] <= 1.0 and status["bestTrial"]["metric"] == status["bestMetric"]
    assert set(status["bestTrial"]["parameters"]) == {"model.kernelSize", "model.poolSize", "model.dropout",
                                                      "training.learningRate"}
    model = status["registeredModel"]
    assert model["name"] == "iceberg-tuning" and model["version"].startswith("v")
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["DatasetReady"] == "True" and conditions["Ready"] == "True"

    # the report is published: trials table, history, plots, summary
    report = Path(status["report"].removeprefix("file://"))
    for name in ("trials.parquet", "trials.csv", "history.parquet", "summary.json",
                 "plots/learning_curves.png", "plots/parameter_importance.png"):
        assert (report / name).is_file(), name
    assert (report / "plots/learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # what the user saw, with the output piped (not a terminal): a line per stage and per finished trial,
    # then the trial table -- all of it as the trials file has it
    shown = run.stderr
    trials_csv = {row["trial_id"]: row for row in csv.DictReader((report / "trials.csv").open())}
    assert len(trials_csv) == 4
    label = "TuningExperiment default/iceberg-tuning"
    for stage in ("started", "checking the search space, the dataset and the model", "running trials",
                  "registering the best trial's model", "publishing the report"):
        assert f"\n{label}: {stage}" in "\n" + shown, stage
    lines = {m.group(1): m for m in re.finditer(
        r"^  trial (\S+) (\S+) after (\d+)/2 epochs in [\d.]+ s: (.*); val_accuracy \(last epoch\) (\S+)$", shown,
        re.MULTILINE)}
    assert sorted(lines) == sorted(trials_csv), shown
    for tid, row in trials_csv.items():
        line = lines[tid]
        assert (line.group(2), int(line.group(3))) == (row["state"], int(row["epochs"]))
        assert float(line.group(5)) == pytest.approx(float(row["val_accuracy_last"]), rel=1e-3)
        assert f"model.kernelSize={row['model.kernelSize']}" in line.group(4)
    table = shown[shown.index("\nTRIAL "):].strip().splitlines()
    assert re.split(r"\s{2,}", table[0]) == ["TRIAL", "STATE", "PARAMETERS", "VAL_ACCURACY (LAST EPOCH)", "EPOCHS",
                                              "DURATION"]
    rows = {cells[0]: cells for cells in (re.split(r"\s{2,}", line) for line in table[1:5])}
    assert {tid: cells[1] for tid, cells in rows.items()} == {tid: r["state"] for tid, r in trials_csv.items()}
    for tid, cells in rows.items():  # the value the experiment ranks by, as the trials file has it
        assert float(cells[3]) == pytest.approx(float(trials_csv[tid]["val_accuracy_last"]), rel=1e-3)
    assert table[5] == ("val_accuracy (maximize): each trial's value at its last epoch (val_accuracy_last in the "
                        "report); it ranks the trials")
    best = trials_csv[status["bestTrial"]["id"]]
    assert status["bestMetric"] == pytest.approx(float(best["val_accuracy_last"]))

    # the registry: the objective and the validation metrics first; the tuned model arguments described
    listed = _cli("get", "models", "iceberg-tuning", "-n", "default", store=iceberg_dataset.store_uri).stdout
    header, row = listed.strip().splitlines()
    metrics = row[header.index("METRICS"):header.index("DATASET")].split()
    assert metrics[0] == f"val_accuracy={status['bestMetric']:.4g}" and all(m.startswith("val_") for m in metrics)
    described = _cli("describe", "model", "iceberg-tuning", store=iceberg_dataset.store_uri).stdout.splitlines()
    assert re.fullmatch(r"Weights: +\d{1,3}(,\d{3})+ parameters", next(x for x in described if x.startswith("Weights")))
    assert not any(x.startswith("Parameters:") for x in described)
    model_args = yaml.safe_load("\n".join(described[described.index("  Model:") + 1:described.index("  Training:")]))
    for name in ("kernelSize", "poolSize", "dropout"):  # the tuned ones, with the best trial's values
        assert model_args[name] == pytest.approx(float(status["bestTrial"]["parameters"][f"model.{name}"]), rel=1e-5)

    # the registry lists it, and the same STAC search finds it next to the datasets
    models = json.loads(_cli("get", "models", "iceberg-tuning", "-o", "json", store=iceberg_dataset.store_uri).stdout)
    rows = models if isinstance(models, list) else models.get("items", [])
    assert any(r.get("version") == model["version"] for r in rows), models
    found = _cli("search", "--filter", "mlm:architecture = 'iceberg-cnn'", "-o", "json",
                 store=iceberg_dataset.store_uri)
    assert found.returncode == 0, found.stderr
    ids = [f["id"] for f in json.loads(found.stdout)["features"]]
    assert any("iceberg-tuning" in i for i in ids), ids

    # applying the same manifest again is a no-op: the generation already succeeded
    again = _cli("run", "-f", str(manifest), "--ray-address", address, store=iceberg_dataset.store_uri)
    assert again.returncode == 0, again.stdout + again.stderr
    after = json.loads(_cli("get", "tex", "iceberg-tuning", "-o", "json", store=iceberg_dataset.store_uri).stdout)
    assert after["status"]["registeredModel"] == model


def test_the_example_dataset_run_says_what_it_made_and_how_long_it_took(tmp_path, ray_local):
    doc = example("examples/ship-iceberg/01-dataset.yaml", **{"spec.source.sample.count": 60})
    manifest = tmp_path / "dataset.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    store = (tmp_path / "store").as_uri()
    run = _cli("run", "-f", str(manifest), "--ray-address", ray_local.get_runtime_context().gcs_address, store=store)
    assert run.returncode == 0, run.stdout + run.stderr
    label = "EODataset default/iceberg-chips"
    for stage in ("started", "resolving scenes", "processing scenes", "validating, writing statistics and the catalog"):
        assert f"\n{label}: {stage}" in "\n" + run.stderr, stage
    # one run, two durations, each named: the whole run (Ray's start included) and the scenes' processing
    done = re.search(rf"^{label}: Succeeded, the run took (\d+) s: 60 chips from 60 scenes "
                     r"\(scene processing ([\d.]+) s\)$", run.stderr, re.MULTILINE)
    assert done, run.stderr
    assert float(done.group(2)) <= int(done.group(1)) + 1

    got = _cli("get", "eods", "-n", "default", store=store).stdout.strip().splitlines()
    assert got[0].split() == ["NAME", "PHASE", "PROGRESS", "CHIPS", "AGE"]
    assert got[1].split()[:5] == ["iceberg-chips", "Succeeded", "60/60", "scenes", "60"]  # every split's chips
    described = _cli("describe", "eods", "iceberg-chips", store=store).stdout
    chips = re.search(r"^  Chips: +60 \(train (\d+), validation (\d+), test (\d+)\)$", described, re.MULTILINE)
    assert chips and sum(int(n) for n in chips.groups()) == 60, described
    assert f"  Run Duration:         {done.group(1)} s" in described.splitlines()
