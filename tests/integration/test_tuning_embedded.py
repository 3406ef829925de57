"""The ship/iceberg example experiment end to end in embedded mode, through the command line a user
types: `earthops run -f` (dataset Ready, experiment, registered model), `get`, `get models`, `search`."""

from __future__ import annotations

import json
import os
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
