"""The one reading of a drift report (earthops.core.monitoring.drift_status): status.drift, the Drift
condition and the events, for every report status and transition; the per-band table; pure."""

from __future__ import annotations

import pytest

from earthops.core.monitoring import band_rows, drift_status

pytestmark = pytest.mark.unit


def report(status="ok", score=0.05, band="HH", version="v3", model="m", **extra):
    return {"status": status, "score": score, "band": band, "threshold": 0.2,
            "model": {"name": model, "version": version},
            "window": {"id": "w1", "chips": 64, "requests": 8},
            "bands": [{"name": "HH", "psi": 0.05, "wasserstein": 0.1, "mean": -20.0, "referenceMean": -20.1,
                       "pAdjusted": 0.5, "drift": False},
                      {"name": "HV", "psi": score if band == "HV" else 0.01, "wasserstein": 0.7, "mean": -26.0,
                       "referenceMean": -29.0, "pAdjusted": 1e-9, "drift": status == "drift" and band == "HV"}],
            "predictions": {"psi": 0.02, "drift": False}, **extra}


def cond(status):
    return [{"type": "Drift", "status": status, "reason": "x", "message": "", "lastTransitionTime": "t"}]


def test_no_report_yet_is_unknown_and_leaves_status_drift_alone():
    out = drift_status(None, [])
    assert out.drift is None and out.event is None
    assert (out.condition.type, out.condition.status, out.condition.reason) == ("Drift", "Unknown", "NoWindowYet")


def test_drift_starts_with_a_warning_event_once_and_ends_with_a_normal_one():
    drifted = report("drift", 0.61, "HV")
    start = drift_status(drifted, cond("False"))
    assert start.drift == {"detected": True, "score": 0.61, "band": "HV"}
    assert (start.condition.status, start.condition.reason) == ("True", "DriftDetected")
    assert "HV" in start.condition.message and "0.61" in start.condition.message
    assert start.event and (start.event.type, start.event.reason) == ("Warning", "DriftDetected")
    assert drift_status(drifted, []).event.type == "Warning"  # first report already drifted
    assert drift_status(drifted, cond("True")).event is None  # still drifting: no new event
    end = drift_status(report(), cond("True"))
    assert end.drift == {"detected": False, "score": 0.05, "band": "HH"}
    assert (end.condition.status, end.condition.reason) == ("False", "NoDrift")
    assert end.event and (end.event.type, end.event.reason) == ("Normal", "DriftEnded")
    assert drift_status(report(), cond("False")).event is None
    assert drift_status(report(), cond("Unknown")).event is None  # Unknown -> False: drift never started


def test_insufficient_error_invalid_and_stale_reports():
    thin = drift_status(report("insufficient", None, None), cond("True"))
    assert (thin.condition.status, thin.condition.reason, thin.drift, thin.event) == (
        "Unknown", "InsufficientData", None, None)
    assert "insufficient data (64 chips, 8 requests)" in thin.condition.message
    failed = drift_status({"status": "error", "message": "reference s3://b/ds/stats.json: no band 'VV'"}, [])
    assert (failed.condition.reason, failed.condition.message) == (
        "MonitoringFailed", "reference s3://b/ds/stats.json: no band 'VV'")
    assert drift_status({"status": "sideways"}, []).condition.reason == "InvalidReport"
    stale = drift_status(report("drift", 0.6, "HV", version="v2"), [], model_version="m/v3")
    assert stale.condition.reason == "NoWindowYet" and "v2" in stale.condition.message and stale.drift is None
    assert drift_status(report(version="v3"), [], model_version="m/v3").condition.reason == "NoDrift"
    assert drift_status(report(version="v3"), [], model_version="v3").condition.reason == "NoDrift"


def test_band_rows_are_worst_first_with_the_predictions_last():
    rows = band_rows(report("drift", 0.61, "HV"))
    assert [r["band"] for r in rows] == ["HV", "HH", "predictions"]
    assert rows[0]["drift"] == "yes" and rows[0]["psi"] == "0.61" and rows[1]["drift"] == "no"


def test_describe_prints_the_per_band_table():
    from earthops.control.display import drift_table

    text = drift_table({**report("drift", 0.61, "HV"), "message": "drift in HV; worst HV PSI 0.61 (threshold 0.2)",
                        "reference": {"uri": "s3://b/models/ns/m/v3/stats.json"}})
    lines = text.splitlines()
    assert "window w1" in lines[0] and "drift in HV" in lines[0] and "s3://b/models/ns/m/v3/stats.json" in lines[0]
    assert lines[1].split()[:4] == ["BAND", "PSI", "WASSERSTEIN", "MEAN"]
    assert lines[2].split()[:2] == ["HV", "0.61"] and lines[2].split()[-1] == "yes"
    assert lines[-1].split()[0] == "predictions"
    assert drift_table({"status": "error", "message": "no band 'VV'"}) == "Drift: monitoring failed: no band 'VV'"


def test_deployment_status_carries_drift_and_the_condition_through_the_one_derivation():
    from earthops.api import parse_resource
    from earthops.control.reconcile.drift import monitoring_arguments
    from earthops.control.reconcile.inferenceservice import Models, Observed, ServedModel, deployment_status
    from earthops.control.status import Execution

    v1 = ServedModel("ships", "v1", "file:///s/models/default/ships/v1")
    models = Models(v1)
    observed = Observed(Execution("Succeeded", "", "serving"), {"modelVersion": "ships/v1", "url": "http://x"})

    def status(previous, report, monitored=True):
        return deployment_status(generation=2, previous=previous, observed=observed, models=models, run="g2-x",
                                 monitored=monitored, drift_report=report)

    def drift_condition(s):
        return next(c for c in s["conditions"] if c["type"] == "Drift")

    first = status(None, None)
    assert first["phase"] == "Ready" and "drift" not in first
    assert drift_condition(first)["reason"] == "NoWindowYet" and drift_condition(first)["observedGeneration"] == 2
    drifted = status(first, report("drift", 0.61, "HV", version="v1", model="ships"))
    assert drifted["drift"] == {"detected": True, "score": 0.61, "band": "HV"}
    assert drift_condition(drifted)["status"] == "True"
    from earthops.core.monitoring import drift_event

    assert drift_event(first, drifted).type == "Warning"
    again = status(drifted, None)  # the report cannot be read now: what the status said stays
    assert again["drift"] == drifted["drift"] and drift_condition(again) == drift_condition(drifted)
    thin = status(drifted, report("insufficient", None, None, version="v1", model="ships"))
    assert thin["drift"] == drifted["drift"] and drift_condition(thin)["reason"] == "InsufficientData"
    assert drift_event(drifted, thin) is None
    # drift again after an Unknown window (a quiet replica, a canary's report): the same drift, no new Warning
    assert drift_event(thin, status(thin, report("drift", 0.7, "HV", version="v1", model="ships"))) is None
    ended = status(drifted, report(version="v1", model="ships"))
    assert ended["drift"]["detected"] is False and drift_event(drifted, ended).type == "Normal"
    assert drift_event(thin, status(thin, report(version="v1", model="ships"))).type == "Normal"  # ends after Unknown
    kept = deployment_status(generation=2, previous=drifted, observed=observed, models=models, run="g2-x")
    assert kept["drift"] == drifted["drift"]  # a caller that did not look (monitored None) keeps both
    off = status(drifted, None, monitored=False)
    assert "drift" not in off and all(c["type"] != "Drift" for c in off["conditions"])

    r = parse_resource({"apiVersion": "earthops.dev/v1alpha1", "kind": "ModelDeployment",
                        "metadata": {"name": "ships", "namespace": "ns1"},
                        "spec": {"modelRef": {"model": "ships"}, "monitoring": {"window": 64, "interval": "90s",
                                                                                "threshold": 0.25}}}, "t")
    assert monitoring_arguments(r, v1.uri, None) == [
        "--monitor-reference", v1.uri, "--monitor-window", "64", "--monitor-interval", "90s",
        "--monitor-threshold", "0.25", "--monitor-store", "file:///s", "--monitor-deployment", "ns1/ships"]
    assert monitoring_arguments(r, v1.uri, "file:///s/datasets/ns1/ds/g1-a")[1] == "file:///s/datasets/ns1/ds/g1-a"
    off_spec = r.model_copy(update={"spec": r.spec.model_copy(update={
        "monitoring": r.spec.monitoring.model_copy(update={"enabled": False})})})
    assert monitoring_arguments(off_spec, v1.uri, None) == []
