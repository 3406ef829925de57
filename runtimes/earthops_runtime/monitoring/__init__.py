"""Drift monitoring of a served model against its training data's own statistics.

:mod:`reference` (the training split's per-band histograms and moments from ``stats.json``, the
validation labels), :mod:`sketch` (mergeable window sketches), :mod:`drift` (PSI, Wasserstein,
per-chip-mean tests, prediction drift; pure), :mod:`monitor` (the predictor's observer: a queue and
a thread, windows, reports), :mod:`report` (JSON and PNG in the store), :mod:`payload` (sampled
Parquet records), :mod:`metrics` (Prometheus gauges). The predictor hands it every decoded batch
through its observer hook; this package never imports the predictor.
"""

from earthops_runtime.monitoring.drift import Limits, assess
from earthops_runtime.monitoring.monitor import Monitor, add_arguments, build_monitor, monitor_from_arguments
from earthops_runtime.monitoring.reference import Reference, ReferenceError, load_reference
from earthops_runtime.monitoring.sketch import WindowSketch

__all__ = ["Limits", "Monitor", "Reference", "ReferenceError", "WindowSketch", "add_arguments", "assess",
           "build_monitor", "load_reference", "monitor_from_arguments"]
