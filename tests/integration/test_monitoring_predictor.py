"""Drift monitoring in the real predictor on loopback (``python -m earthops_runtime.serving`` with the
monitoring flags): a registered iceberg-cnn version whose stats.json is the training reference of
synthetic ship/iceberg chips; windows of 8 requests of 8 chips sent as raw HH/HV bands over the Open
Inference Protocol (the server derives band_avg with the dataset's own feature code). Test-split chips
give no drift; HV + 3 dB flags HV (the worst band) and not HH, within one window; the reports, the
plot and latest.json land in the store; the gauges are on /metrics; a payload sample is written;
a reference without a band the model needs stops the predictor before its port opens, naming it."""

from __future__ import annotations

import re
import sys

import httpx
import numpy as np
import pytest
import torch

from earthops.core.monitoring import drift_status, read_latest, report_key
from earthops.core.store import Store
from earthops_runtime.data.stats import normalization
from earthops_runtime.models import build_model
from tests.infra.drift_data import (
    PEAK_ARCHITECTURE,
    S1_BANDS,
    PeakClassifier,
    register_peak_model,
    s1_pool,
    v2_bands,
)
from tests.infra.proc import log_tail, spawn, stop, wait_for

pytestmark = pytest.mark.integration

NS, DEPLOYMENT, MODEL = "default", "iceberg-classifier", "iceberg-model"
READY = re.compile(r"earthops predictor ready at (http://\S+)")


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    store = Store.from_uri(tmp_path_factory.mktemp("store").as_uri())
    version = register_peak_model(store, NS, MODEL)
    assert isinstance(build_model(PEAK_ARCHITECTURE, {"threshold": 0.0}, in_channels=3, num_classes=2,
                                  task="classification", chip_shape=(75, 75)), PeakClassifier)
    return store, version


def called_ships(registered, pool) -> np.ndarray:
    """Which test chips the registered model predicts as ships (a window of them is one class)."""
    store, version = registered
    item = store.read_json(f"models/{NS}/{MODEL}/{version.version}/item.json")
    threshold = item["properties"]["earthops:parameters"]["threshold"]
    mean, std = normalization(pool.stats, "train", S1_BANDS)
    with torch.no_grad():
        logits = PeakClassifier(threshold)(torch.from_numpy((pool.chips - mean[:, None, None]) / std[:, None, None]))
    return (logits.argmax(dim=1) == 0).numpy()


def start(tmp_path, args, name="predictor"):
    log = tmp_path / f"{name}.log"
    proc = spawn([sys.executable, "-m", "earthops_runtime.serving", "--http_port", "0", "--host", "127.0.0.1",
                  "--model-name", "iceberg", *args], log_path=log)
    url: list[str] = []

    def ready() -> bool:
        m = READY.search(log.read_text(errors="replace"))
        if m:
            url.append(m.group(1))
        return bool(m)

    wait_for(ready, timeout=120, what="predictor", proc=proc, log_path=log)
    return proc, url[0], log


def infer(client, url, hh, hv):
    r = client.post(f"{url}/v2/models/iceberg/infer", json=v2_bands(hh, hv), timeout=60)
    assert r.status_code == 200, r.text


def test_predictor_flags_hv_shift_within_one_window(registered, tmp_path):
    store, version = registered
    pool = s1_pool()
    proc, url, log = start(tmp_path, ["--model-uri", version.uri, "--monitor-reference", version.uri,
                                      "--monitor-window", "8", "--monitor-interval", "1h",
                                      "--monitor-store", store.uri, "--monitor-deployment", f"{NS}/{DEPLOYMENT}",
                                      "--payload-logging", "--payload-sample-rate", "0.1"])
    try:
        with httpx.Client() as client:
            def window(chips, shift_hv=0.0):
                before = read_latest(store, NS, DEPLOYMENT)
                for i in range(0, 64, 8):
                    infer(client, url, chips[i:i + 8, 0], chips[i:i + 8, 1] + np.float32(shift_hv))

                def closed() -> bool:
                    now = read_latest(store, NS, DEPLOYMENT)
                    return now is not None and now != before

                wait_for(closed, timeout=60, what="the window's report", proc=proc, log_path=log)
                return read_latest(store, NS, DEPLOYMENT)

            clean = window(pool.chips[:64])
            shifted = window(pool.chips[64:128], shift_hv=3.0)
            metrics = client.get(f"{url}/metrics", timeout=30).text  # the gauges of the last window
            ships = window(pool.chips[called_ships(registered, pool)][:64])
    finally:
        stop(proc)
    bands = {b["name"]: b for b in clean["bands"]}
    assert clean["status"] == "ok", (clean["message"], log_tail(log))
    assert clean["window"]["chips"] == 64 and clean["model"] == {"name": MODEL, "version": version.version}
    assert all(not b["drift"] for b in bands.values())
    bands = {b["name"]: b for b in shifted["bands"]}
    assert shifted["status"] == "drift" and shifted["band"] == "HV", shifted["message"]
    assert bands["HV"]["drift"] and not bands["HH"]["drift"]
    # band_avg is derived from HV by the server: it moved by half as much, and less than HV
    assert bands["band_avg"]["psi"] < bands["HV"]["psi"]
    assert store.read_bytes(report_key(NS, DEPLOYMENT, shifted["window"]["id"], ".png")).startswith(b"\x89PNG")
    assert store.exists(f"deployments/{NS}/{DEPLOYMENT}/monitoring/{shifted['payloads']}")
    outcome = drift_status(shifted, [{"type": "Drift", "status": "False"}], model_version=f"{MODEL}/{version.version}")
    assert outcome.condition.status == "True" and outcome.event and outcome.event.type == "Warning"
    line = next(x for x in metrics.splitlines() if x.startswith("earthops_drift_psi{") and 'band="HV"' in x)
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(bands["HV"]["psi"])
    assert re.search(r"^earthops_drift_detected\{[^}]*\} 1\.0$", metrics, re.M)
    # a window the model calls ships only: the predictions drift (shares against the validation labels)
    assert ships["predictions"]["drift"] and ships["predictions"]["shares"] == {"ship": 1.0, "iceberg": 0.0}


def test_reference_without_a_model_band_stops_the_predictor_naming_it(registered, tmp_path):
    store, version = registered
    pool = s1_pool()
    bad = tmp_path / "reference"
    bad.mkdir()
    doc = {**pool.stats, "splits": {**pool.stats["splits"], "train": {
        **pool.stats["splits"]["train"],
        "features": {k: v for k, v in pool.stats["splits"]["train"]["features"].items() if k != "HV"}}}}
    Store.from_uri(bad.as_uri()).write_json("stats.json", doc)
    log = tmp_path / "bad.log"
    proc = spawn([sys.executable, "-m", "earthops_runtime.serving", "--http_port", "0", "--host", "127.0.0.1",
                  "--model-name", "iceberg", "--model-uri", version.uri, "--monitor-reference", bad.as_uri()],
                 log_path=log)
    assert proc.wait(timeout=120) == 1
    text = log.read_text()
    assert "error: reference" in text and "no statistics for band 'HV'" in text and "ready at" not in text
