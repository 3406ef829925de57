"""Prometheus metrics of the predictor, on ``/metrics`` beside KServe's own (one registry per process).

* ``earthops_serving_stage_seconds{model,version,stage}``: time per request stage — ``decode``
  (payload -> arrays, GeoTIFF windows read), ``features`` (derived features and normalisation),
  ``forward`` (the model, per micro-batch), ``encode`` (probabilities -> the response).
* ``earthops_serving_batch_size{model,version}``: chips per forward (micro-batches).
* ``earthops_serving_predictions_total{model,version,class}``: predicted labels (argmax; multilabel:
  every class over 0.5; segmentation: pixels).
* ``earthops_serving_errors_total{model,reason}``: refused requests by reason (``shape``, ``dtype``...).
* ``earthops_serving_observer_errors_total{observer}``: observers that raised.
* ``earthops_serving_observer_dropped_total{model}``: batches dropped while observers were behind.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

STAGES = ("decode", "features", "forward", "encode")

STAGE_SECONDS = Histogram(
    "earthops_serving_stage_seconds", "Predictor time per request stage",
    ["model", "version", "stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
BATCH_SIZE = Histogram(
    "earthops_serving_batch_size", "Chips per model forward (micro-batch size)", ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
PREDICTIONS = Counter(
    "earthops_serving_predictions_total", "Predicted labels per class (segmentation: pixels)",
    ["model", "version", "class"])
ERRORS = Counter("earthops_serving_errors_total", "Refused or failed requests by reason", ["model", "reason"])
OBSERVER_ERRORS = Counter("earthops_serving_observer_errors_total", "Observers that raised", ["observer"])
OBSERVER_DROPPED = Counter("earthops_serving_observer_dropped_total",
                           "Batches not handed to observers: too many were waiting for them", ["model"])

__all__ = ["BATCH_SIZE", "ERRORS", "OBSERVER_DROPPED", "OBSERVER_ERRORS", "PREDICTIONS", "STAGES", "STAGE_SECONDS"]
