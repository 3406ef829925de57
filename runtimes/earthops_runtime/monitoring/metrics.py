"""Prometheus gauges of drift monitoring, on the predictor's ``/metrics`` (the default registry, as
the predictor's own metrics in ``earthops_runtime.serving.metrics``). Set when a window closes.

* ``earthops_drift_psi{model,version,band}``: population stability index of the band in the last
  window (NaN: insufficient data).
* ``earthops_drift_wasserstein{model,version,band}``: Wasserstein-1 distance over the reference
  standard deviation.
* ``earthops_drift_chip_mean_p_adjusted{model,version,band}``: the per-chip-mean test, adjusted across bands.
* ``earthops_drift_detected{model,version}``: 1 when the last window drifted, else 0.
* ``earthops_drift_score{model,version}``: the worst band's (or the predictions') PSI.
* ``earthops_prediction_drift_psi{model,version}`` and ``earthops_prediction_share{model,version,class}``:
  class shares of the last window and their PSI against the validation labels.
* ``earthops_drift_windows_total{model,version,status}``: windows closed (ok, drift, insufficient).
* ``earthops_drift_window_chips{model,version}``: chips in the last window.
* ``earthops_drift_dropped_batches_total{model,version}``: batches not counted because the monitor's
  queue was full (monitoring never holds a request back).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge

_MV = ["model", "version"]
PSI = Gauge("earthops_drift_psi", "Population stability index per band, last window", [*_MV, "band"])
WASSERSTEIN = Gauge("earthops_drift_wasserstein", "Wasserstein-1 distance / reference std per band, last window",
                    [*_MV, "band"])
P_ADJUSTED = Gauge("earthops_drift_chip_mean_p_adjusted", "Per-chip-mean test p-value, adjusted across bands",
                   [*_MV, "band"])
DETECTED = Gauge("earthops_drift_detected", "1 when the last window drifted", _MV)
SCORE = Gauge("earthops_drift_score", "Worst PSI of the last window (bands and predictions)", _MV)
PREDICTION_PSI = Gauge("earthops_prediction_drift_psi", "PSI of predicted class shares vs validation labels", _MV)
PREDICTION_SHARE = Gauge("earthops_prediction_share", "Predicted class share, last window", [*_MV, "class"])
WINDOWS = Counter("earthops_drift_windows_total", "Monitoring windows closed", [*_MV, "status"])
WINDOW_CHIPS = Gauge("earthops_drift_window_chips", "Chips in the last monitoring window", _MV)
DROPPED = Counter("earthops_drift_dropped_batches_total", "Batches the monitor's full queue dropped", _MV)


def _value(v: Any) -> float:
    return math.nan if v is None else float(v)


def publish(model: str, version: str, report: Mapping[str, Any]) -> None:
    """Set the gauges from a window's report."""
    mv = {"model": model, "version": version}
    for b in report.get("bands") or []:
        PSI.labels(**mv, band=b["name"]).set(_value(b.get("psi")))
        WASSERSTEIN.labels(**mv, band=b["name"]).set(_value(b.get("wasserstein")))
        P_ADJUSTED.labels(**mv, band=b["name"]).set(_value(b.get("pAdjusted")))
    DETECTED.labels(**mv).set(1.0 if report.get("status") == "drift" else 0.0)
    SCORE.labels(**mv).set(_value(report.get("score")))
    pred = report.get("predictions")
    if pred:
        PREDICTION_PSI.labels(**mv).set(_value(pred.get("psi")))
        for cls, share in (pred.get("shares") or {}).items():
            PREDICTION_SHARE.labels(**mv, **{"class": cls}).set(share)
    WINDOWS.labels(**mv, status=report.get("status", "ok")).inc()
    WINDOW_CHIPS.labels(**mv).set(float((report.get("window") or {}).get("chips", 0)))


__all__ = ["DETECTED", "DROPPED", "PREDICTION_PSI", "PREDICTION_SHARE", "PSI", "P_ADJUSTED", "SCORE", "WASSERSTEIN",
           "WINDOWS", "WINDOW_CHIPS", "publish"]
