"""The ship/iceberg chain in embedded mode through the command line: tuning -> ablation with
``fromTuning`` (the example study: LOCO over HH, HV, band_avg and the conv / pool / dropout groups by
prefix), then ``describe`` prints the ranked table; bad input exits 2 naming the component."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from earthops.core.store import Store
from tests.infra.pytest_datasets import example

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, store: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "EARTHOPS_STORE": store, "COLUMNS": "200", **env}
    return subprocess.run([sys.executable, "-m", "earthops.control.cli", *args], capture_output=True, text=True,
                          env=full, timeout=timeout, cwd=ROOT)


def _store_with_dataset(tmp_path: Path, dataset) -> str:
    """A store of its own (so this test's models and resources stay out of the session store) that
    records the session's Ready dataset as the embedded executor did."""
    store = Store.from_uri((tmp_path / "store").as_uri())
    store.write_json(f"datasets/{dataset.namespace}/{dataset.name}/resource.json", dataset.state)
    return store.uri


def test_example_chain_tuning_then_ablation_from_its_best_trial(tmp_path, iceberg_dataset, ray_local):
    tuning = example("examples/ship-iceberg/02-tuning.yaml", **{
        "metadata.name": "iceberg-tuning-abl", "spec.model.parameters.width": 0.25, "spec.training.epochs": 1,
        "spec.maxTrials": 2, "spec.earlyStopping.gracePeriod": 1, "spec.earlyStopping.minTrials": 2})
    study = example("examples/ship-iceberg/03-ablation.yaml", **{
        "spec.fromTuning.name": "iceberg-tuning-abl", "spec.model.parameters.width": 0.25, "spec.repeats": 2,
        "spec.permutationRepeats": 1})
    assert [g["prefix"] for g in study["spec"]["components"]["layerGroups"]] == ["conv", "pool", "dropout"]
    files = []
    for name, doc in (("tuning", tuning), ("ablation", study)):
        files += ["-f", str(tmp_path / f"{name}.yaml")]
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    address = ray_local.get_runtime_context().gcs_address
    store = _store_with_dataset(tmp_path, iceberg_dataset)

    run = _cli("run", *files, "--ray-address", address, store=store, EARTHOPS_TRIAL_MAX_BATCHES="2")
    assert run.returncode == 0, run.stdout + run.stderr
    got = json.loads(_cli("get", "abl", "iceberg-ablation", "-o", "json", store=store).stdout)
    status = got["status"]
    assert status["phase"] == "Succeeded", status
    # base + HH, HV, band_avg, conv, pool, dropout; 2 seeds each
    assert (status["trialsTotal"], status["trialsDone"], status["trialsFailed"]) == (14, 14, 0)
    assert status["mostImportant"]["component"] in {"HH", "HV", "band_avg", "conv", "pool", "dropout"}
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["DatasetReady"] == conditions["TuningExperimentReady"] == conditions["Ready"] == "True"
    tex = json.loads(_cli("get", "tex", "iceberg-tuning-abl", "-o", "json", store=store).stdout)["status"]
    assert status["tuningTrial"] == tex["bestTrial"]["id"]
    summary = Store.from_uri(status["results"]).read_json("summary.json")
    assert summary["fromTuning"]["trial"] == tex["bestTrial"]["id"]
    layers = {c["name"]: c["layers"] for c in summary["components"]}
    assert layers["conv"] == ["conv2", "conv3", "conv4"] and layers["pool"] == ["pool1", "pool2", "pool3", "pool4"]
    report = Store.from_uri(status["results"]).read_bytes("report.md").decode()
    assert f"best trial `{tex['bestTrial']['id']}`" in report

    printed = _cli("get", "abl", "-n", "default", store=store).stdout.splitlines()
    assert printed[0].split()[:5] == ["NAME", "PHASE", "TRIALS", "BASE", "TOP"]
    assert printed[1].split()[:4] == ["iceberg-ablation", "Succeeded", "14/14", "trials"]
    described = _cli("describe", "ablationstudy", "iceberg-ablation", store=store)
    assert described.returncode == 0, described.stderr
    text = described.stdout[described.stdout.index("Ranked components"):]
    assert text.splitlines()[1].split()[:4] == ["RANK", "COMPONENT", "KIND", "PAIRS"]
    assert text.splitlines()[2].split()[:2] == ["1", status["mostImportant"]["component"]]


def test_bad_input_exits_2_naming_the_component(tmp_path, iceberg_dataset, ray_local):
    store = _store_with_dataset(tmp_path, iceberg_dataset)
    address = ray_local.get_runtime_context().gcs_address
    study = example("examples/ship-iceberg/03-ablation.yaml", **{
        "metadata.name": "bad-feature", "spec.components": {"features": ["HH", "HX"]}})
    study["spec"].pop("fromTuning")
    study["spec"]["training"] = {"epochs": 1}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(study))
    bad = _cli("run", "-f", str(tmp_path / "bad.yaml"), "--ray-address", address, store=store)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "spec.components.features[1]: feature HX not in the dataset; its features: HH, HV, band_avg" in bad.stderr

    # a TuningExperiment that failed: the study fails on it, naming it, before anything runs
    failed = example("examples/ship-iceberg/02-tuning.yaml", **{"metadata.name": "broken-tuning"})
    failed["status"] = {"phase": "Failed", "message": "3 trials failed, more than maxFailedTrials 2"}
    Store.from_uri(store).write_json("experiments/default/broken-tuning/resource.json", failed)
    study = example("examples/ship-iceberg/03-ablation.yaml", **{"metadata.name": "from-broken",
                                                                 "spec.fromTuning.name": "broken-tuning"})
    (tmp_path / "from-broken.yaml").write_text(yaml.safe_dump(study))
    refused = _cli("run", "-f", str(tmp_path / "from-broken.yaml"), "--ray-address", address, store=store)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "TuningExperiment 'broken-tuning' failed (3 trials failed" in refused.stderr
    got = json.loads(_cli("get", "abl", "from-broken", "-o", "json", store=store).stdout)["status"]
    ready = next(c for c in got["conditions"] if c["type"] == "Ready")
    assert (got["phase"], ready["reason"]) == ("Failed", "TuningExperimentFailed")
