"""The drift monitor as the predictor runs it (earthops_runtime.monitoring.monitor), on a local store:
windows closed by requests and by interval, reports + plot + latest.json where the control plane
reads them, Prometheus gauges on the default registry, payload records bounded and sampled, flags,
and the startup errors (missing reference, a band without statistics) written as the latest report."""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from prometheus_client import REGISTRY

from earthops.core.monitoring import drift_status, latest_key, read_latest, report_key
from earthops.core.store import Store
from earthops_runtime.monitoring.monitor import Monitor, add_arguments, build_monitor, monitor_from_arguments
from earthops_runtime.monitoring.payload import PayloadSettings, payload_key
from earthops_runtime.monitoring.reference import ReferenceError, load_reference
from earthops_runtime.serving.observe import ObservedBatch
from tests.infra.drift_data import S1_CLASSES, probabilities, s1_pool

pytestmark = pytest.mark.unit

NS, NAME = "default", "iceberg-classifier"


def batches(chips, labels, size=8, version="v1"):
    for i in range(0, len(chips), size):
        yield ObservedBatch(model_name="iceberg", model_version=version, features=chips[i:i + size],
                            feature_names=("HH", "HV", "band_avg"), outputs=probabilities(labels[i:i + size]),
                            class_names=S1_CLASSES, task="classification", request_id=f"r{i}")


@pytest.fixture
def store(tmp_path):
    return Store.from_uri(tmp_path.as_uri())


@pytest.fixture
def reference():
    return load_reference(s1_pool().stats, features=("HH", "HV", "band_avg"), classes=S1_CLASSES,
                          source="file:///ref/stats.json")


def gauge(name, **labels):
    return REGISTRY.get_sample_value(name, labels)


def test_windows_close_after_n_requests_and_write_report_plot_payloads_and_latest(store, reference):
    pool = s1_pool()
    monitor = Monitor(reference, model_name="iceberg-model", model_version="v1", window=8, interval=3600,
                      store=store, deployment=(NS, NAME), payloads=PayloadSettings(rate=0.5, max_bytes=40_000,
                                                                                     max_records=20))
    try:
        for b in batches(pool.chips[:64], pool.labels[:64]):
            monitor.observe(b)
        shifted = pool.chips[64:128].copy()
        shifted[:, 1] += 3.0
        for b in batches(shifted, pool.labels[64:128]):
            monitor.observe(b)
        for b in batches(pool.chips[:8], pool.labels[:8], version="v2"):  # a canary's batch: not this monitor's
            monitor.observe(b)
        assert monitor.flush() is None  # both windows closed by their 8th request; the canary's counted nowhere
    finally:
        monitor.close()
    first, second = monitor.reports
    assert first["status"] == "ok" and first["window"]["closedBy"] == "requests"
    assert second["status"] == "drift" and second["band"] == "HV"
    assert first["window"]["requests"] == 8 and first["window"]["chips"] == 64
    stored = store.read_json(report_key(NS, NAME, second["window"]["id"]))
    assert stored == json.loads(json.dumps(second)) == read_latest(store, NS, NAME)
    assert read_latest(store, NS, NAME, "v1") == stored == store.read_json(latest_key(NS, NAME, "v1"))
    png = store.read_bytes(report_key(NS, NAME, second["window"]["id"], ".png"))
    assert png.startswith(b"\x89PNG") and stored["plot"] == f"{second['window']['id']}.png"
    # payload records: sampled, bounded per window, the values only while they fit, nothing else
    table = pq.read_table(io.BytesIO(store.read_bytes(payload_key(NS, NAME, second["window"]["id"]))))
    assert 0 < table.num_rows <= 20 and stored["payloads"] == f"payloads/{second['window']['id']}.parquet"
    rows = table.to_pylist()
    assert all(r["truncated"] and r["values"] is None for r in rows)  # 3 x 75 x 75 x 4 bytes > 40,000
    assert set(rows[0]) == {"time", "request_id", "model", "model_version", "chip", "shape", "bands", "band_means",
                            "output", "classes", "values", "truncated"}
    for row in rows:  # each record is the chip it names: request r<first chip of the batch>, chip in the batch
        chip = shifted[int(row["request_id"][1:]) + row["chip"]]
        assert row["band_means"] == pytest.approx([float(np.nanmean(band)) for band in chip], rel=1e-5)
        assert row["model_version"] == "v1" and row["bands"] == ["HH", "HV", "band_avg"] and len(row["output"]) == 2
    # gauges of the last window
    labels = {"model": "iceberg-model", "version": "v1"}
    assert gauge("earthops_drift_detected", **labels) == 1.0
    assert gauge("earthops_drift_psi", **labels, band="HV") == pytest.approx(second["bands"][1]["psi"])
    assert gauge("earthops_drift_psi", **labels, band="HH") < 0.2
    assert gauge("earthops_prediction_share", **labels, **{"class": "ship"}) == pytest.approx(
        second["predictions"]["shares"]["ship"])
    assert gauge("earthops_drift_windows_total", **labels, status="drift") >= 1


def test_a_window_closes_on_interval_and_an_empty_one_writes_nothing(store, reference):
    pool = s1_pool()
    now = [0.0]
    seen = []
    monitor = Monitor(reference, model_name="m", model_version="v1", window=10_000, interval=60,
                      store=store, deployment=(NS, NAME), clock=lambda: now[0], on_report=seen.append)
    try:
        for b in batches(pool.chips[:40], pool.labels[:40]):
            monitor.observe(b)
        monitor.observe(next(batches(pool.chips[:8], pool.labels[:8])))
        monitor.drain()
        assert not seen
        now[0] = 61.0  # the interval passes: the worker closes the window on its next wake-up
        for _ in range(100):
            if seen:
                break
            time.sleep(0.05)
        assert seen and seen[0]["window"]["closedBy"] == "interval" and seen[0]["window"]["chips"] == 48
        now[0] = 200.0  # another interval without requests: no window, no report
        assert monitor.flush() is None and len(seen) == 1
    finally:
        monitor.close()


def test_thin_window_reports_insufficient_data_and_the_condition_says_so(store, reference):
    pool = s1_pool()
    monitor = Monitor(reference, model_name="m", model_version="v1", window=2, store=store, deployment=(NS, NAME))
    try:
        for b in batches(pool.chips[:4], pool.labels[:4], size=2):
            monitor.observe(b)
        monitor.flush()
    finally:
        monitor.close()
    report = read_latest(store, NS, NAME)
    assert report["status"] == "insufficient" and report["score"] is None and "plot" not in report
    outcome = drift_status(report, [])
    assert outcome.condition.status == "Unknown" and outcome.condition.reason == "InsufficientData"
    assert outcome.drift is None and outcome.event is None


def test_startup_errors_name_the_reference_and_band_and_become_the_latest_report(store, tmp_path):
    pool = s1_pool()
    with pytest.raises(ReferenceError, match=r"reference .*/nowhere/stats.json: not found"):
        build_monitor(str(tmp_path / "nowhere"), features=("HH",), classes=(), task="classification",
                      model_name="m", model_version="v1", store=store, deployment=(NS, NAME))
    error = store.read_json(latest_key(NS, NAME))
    assert error["status"] == "error" and "nowhere" in error["message"]
    assert store.read_json(latest_key(NS, NAME, "v1")) == error
    outcome = drift_status(error, [])
    assert (outcome.condition.status, outcome.condition.reason) == ("Unknown", "MonitoringFailed")
    assert "nowhere" in outcome.condition.message
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "stats.json").write_text(json.dumps(pool.stats))
    with pytest.raises(ReferenceError, match=r"ds/stats.json: split 'train' has no statistics for band 'VV'"):
        build_monitor(f"file://{tmp_path / 'ds'}", features=("HH", "VV"), classes=(), task="classification",
                      model_name="m", model_version="v1", store=store, deployment=(NS, NAME))
    assert "'VV'" in drift_status(read_latest(store, NS, NAME), []).condition.message


def test_flags(tmp_path):
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert monitor_from_arguments(p.parse_args([]), model_uri="unused") is None
    for argv, message in ((["--monitor-reference", "x", "--monitor-interval", "5 minutes"], "--monitor-interval"),
                          (["--monitor-reference", "x", "--monitor-interval", "0s"], "--monitor-interval"),
                          (["--monitor-reference", "x", "--monitor-window", "0"], "--monitor-window"),
                          (["--monitor-reference", "x", "--monitor-store", "file:///s"], "go together"),
                          (["--monitor-reference", "x", "--monitor-store", "file:///s", "--monitor-deployment", "a"],
                           "NAMESPACE/NAME"),
                          (["--monitor-reference", "x", "--payload-logging"], "needs --monitor-store")):
        with pytest.raises(ValueError, match=message):
            monitor_from_arguments(p.parse_args(argv), model_uri="unused")
    with pytest.raises(ReferenceError, match="model .*/no-model/item.json: not found"):
        monitor_from_arguments(p.parse_args(["--monitor-reference", "x"]), model_uri=str(tmp_path / "no-model"))
    assert not (tmp_path / "no-model").exists()


def test_payload_records_keep_values_that_fit_and_stop_at_the_cap(store):
    from earthops_runtime.monitoring.payload import PayloadLog

    pool = s1_pool()
    log = PayloadLog(PayloadSettings(rate=1.0, max_bytes=3 * 75 * 75 * 4, max_records=3))
    for b in batches(pool.chips[:16], pool.labels[:16]):
        log.add(b)
    assert len(log.records) == 3  # the cap, although every chip was sampled
    key = log.flush(store, NS, NAME, "w1")
    rows = pq.read_table(io.BytesIO(store.read_bytes(key))).to_pylist()
    assert [r["chip"] for r in rows] == [0, 1, 2] and not any(r["truncated"] for r in rows)
    values = np.frombuffer(rows[1]["values"], "<f4").reshape(rows[1]["shape"])
    np.testing.assert_array_equal(values, pool.chips[1])
    assert log.records == [] and log.flush(store, NS, NAME, "w2") is None
    with pytest.raises(ValueError, match="sample rate 0"):
        PayloadSettings(rate=0)


def test_each_model_version_has_its_own_latest_report(store):
    # a canary revision writes latest.json too: the primary's report stays readable as its own
    from earthops_runtime.monitoring.report import write_report

    def report(version, status):
        return {"status": status, "model": {"name": "iceberg", "version": version}, "window": {"id": f"w-{version}"}}

    assert read_latest(store, NS, NAME, "v1") is None
    write_report(store, NS, NAME, report("v1", "drift"))
    write_report(store, NS, NAME, report("v2", "ok"))
    assert read_latest(store, NS, NAME)["model"]["version"] == "v2"  # latest.json: any version's (describe)
    assert read_latest(store, NS, NAME, "v1")["status"] == "drift"
    assert read_latest(store, NS, NAME, "v2")["status"] == "ok"
    store.delete(latest_key(NS, NAME, "v1"))  # a predictor that writes latest.json only: read that
    assert read_latest(store, NS, NAME, "v1")["model"]["version"] == "v2"
