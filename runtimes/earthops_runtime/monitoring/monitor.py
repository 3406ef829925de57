"""The predictor's drift monitor: an observer that sketches windows off the request path.

``observe(batch)`` only puts the batch on a bounded queue (a full queue drops it and counts it in
``earthops_drift_dropped_batches_total``: monitoring never holds a request back). One background
thread adds each batch to the window's :class:`WindowSketch` (vectorised: one pass per band) and closes
the window after ``window`` requests or ``interval`` seconds, whichever comes first (an interval
without requests closes nothing). Closing scores the window (:func:`assess`), sets the Prometheus
gauges, and — with a store and a deployment — writes the report, its plot, the payload sample and
``latest-<version>.json`` and ``latest.json`` (:mod:`earthops.core.monitoring` says where and what they mean).

Startup fails clearly (:class:`ReferenceError`, naming the reference and the band) when the
reference is missing or lacks a band the model consumes; with a store, that failure is also written
as the deployment's latest report (status ``error``), so its ``Drift`` condition says why.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from earthops.api.common import duration_seconds
from earthops.core.monitoring import REPORT_VERSION, latest_key
from earthops.core.store import Store
from earthops_runtime.monitoring import metrics
from earthops_runtime.monitoring.drift import DEFAULT_LIMITS, DEFAULT_THRESHOLD, MIN_CHIPS, MIN_VALUES, Limits, assess
from earthops_runtime.monitoring.payload import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_RECORDS,
    DEFAULT_RATE,
    PayloadLog,
    PayloadSettings,
)
from earthops_runtime.monitoring.reference import (
    Reference,
    ReferenceError,
    load_reference,
    model_io,
    read_reference_document,
    reference_location,
)
from earthops_runtime.monitoring.report import write_report
from earthops_runtime.monitoring.sketch import WindowSketch

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 500
DEFAULT_INTERVAL = 300.0
QUEUE_SIZE = 256


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def replica_name() -> str:
    """This replica's name in window ids (the pod's host name), safe as a file name."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", os.environ.get("HOSTNAME") or f"pid{os.getpid()}").strip("-") or "replica"


class Monitor:
    """Drift monitor of one served model over one reference (see the module docstring)."""

    def __init__(self, reference: Reference, *, model_name: str, model_version: str, window: int = DEFAULT_WINDOW,
                 interval: float = DEFAULT_INTERVAL, limits: Limits = DEFAULT_LIMITS, store: Store | None = None,
                 deployment: tuple[str, str] | None = None, payloads: PayloadSettings | None = None,
                 queue_size: int = QUEUE_SIZE, clock: Callable[[], float] = time.monotonic,
                 on_report: Callable[[dict[str, Any]], None] | None = None):
        if window < 1:
            raise ValueError(f"monitoring window {window}: expected at least 1 request")
        if not interval > 0:
            raise ValueError(f"monitoring interval {interval}: expected a positive number of seconds")
        if (store is None) != (deployment is None):
            raise ValueError("a monitor writes reports with both a store and a deployment (namespace/name), or neither")
        self.reference = reference
        self.model_name, self.model_version = model_name, model_version
        self.window, self.interval, self.limits = int(window), float(interval), limits
        self.store, self.deployment = store, deployment
        self.payloads = PayloadLog(payloads, seed=os.getpid()) if payloads is not None else None
        self.on_report = on_report
        self.replica = replica_name()
        self.reports: list[dict[str, Any]] = []  # the last few, newest last
        self._clock = clock
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._seq = 0
        self._sketch = self._new_sketch()
        self._started_at = datetime.now(UTC)
        self._started = clock()
        self._mismatch_logged = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="earthops-drift-monitor", daemon=True)
        self._thread.start()

    # --- the observer --------------------------------------------------------------------------

    def observe(self, batch: Any) -> None:
        """Queue a batch (an ``ObservedBatch``); returns at once."""
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            metrics.DROPPED.labels(model=self.model_name, version=self.model_version).inc()

    def drain(self) -> None:
        """Wait until every queued batch is in the window (the window stays open)."""
        self._queue.join()

    def flush(self, timeout: float = 60.0) -> dict[str, Any] | None:
        """Wait for the queued batches, close the current window now; its report (None when it was empty)."""
        done: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._queue.put(("close", done), timeout=timeout)
        return done.get(timeout=timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Stop the thread, closing the current window first."""
        if self._thread.is_alive():
            self.flush(timeout)
            self._stop.set()
            self._queue.put(None)
            self._thread.join(timeout)

    # --- the worker ----------------------------------------------------------------------------

    def _new_sketch(self) -> WindowSketch:
        return WindowSketch(self.reference, seed=(os.getpid(), self._seq))

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = max(0.05, self.interval - (self._clock() - self._started))
            try:
                item = self._queue.get(timeout=min(wait, 1.0))
            except queue.Empty:
                item = None
            try:
                if isinstance(item, tuple) and item and item[0] == "close":
                    item[1].put(self._close("flush"))
                    continue
                if item is not None:
                    self._add(item)
                    if self._sketch.requests >= self.window:
                        self._close("requests")
                if self._clock() - self._started >= self.interval:
                    self._close("interval")
            except Exception:  # noqa: BLE001 - the monitor logs and goes on: serving must not stop
                log.exception("drift monitor of %s %s failed on a batch", self.model_name, self.model_version)
            finally:
                if item is not None:
                    self._queue.task_done()

    def _add(self, batch: Any) -> None:
        if str(batch.model_version) != self.model_version:
            return  # a canary's batches: its own reference, its own predictions
        names = tuple(batch.feature_names)
        if names != self.reference.names:
            if not self._mismatch_logged:
                log.error("drift monitor: the predictor's bands %s are not the reference's %s; batches ignored",
                          list(names), list(self.reference.names))
                self._mismatch_logged = True
            return
        self._sketch.update(batch.features, batch.outputs)
        if self.payloads is not None:
            self.payloads.add(batch)

    def _close(self, closed_by: str) -> dict[str, Any] | None:
        sketch, started_at = self._sketch, self._started_at
        self._started, self._started_at = self._clock(), datetime.now(UTC)
        if sketch.requests == 0:
            return None
        self._seq += 1
        self._sketch = self._new_sketch()
        window_id = f"{started_at.strftime('%Y%m%dT%H%M%SZ')}-{self.replica}-{self._seq:05d}"
        report = self.report(sketch, window={
            "id": window_id, "start": _stamp(started_at), "end": _stamp(datetime.now(UTC)),
            "requests": sketch.requests, "chips": sketch.chips, "closedBy": closed_by, "replica": self.replica})
        metrics.publish(self.model_name, self.model_version, report)
        if self.store is not None and self.deployment is not None:
            ns, name = self.deployment
            if self.payloads is not None:
                key = self.payloads.flush(self.store, ns, name, window_id)
                if key:
                    report["payloads"] = key.rpartition("/monitoring/")[2]
            report = write_report(self.store, ns, name, report, self.reference)
        self.reports = [*self.reports[-9:], report]
        log.info("drift window %s: %s", window_id, report["message"])
        if self.on_report is not None:
            self.on_report(report)
        return report

    def report(self, sketch: WindowSketch, window: dict[str, Any]) -> dict[str, Any]:
        """The report of a window (its scores and what it was measured against)."""
        return {
            "version": REPORT_VERSION,
            "deployment": ({"namespace": self.deployment[0], "name": self.deployment[1]} if self.deployment else None),
            "model": {"name": self.model_name, "version": self.model_version},
            "window": window,
            "reference": {"uri": self.reference.source, "split": self.reference.split,
                          "labelSplit": self.reference.label_split},
            **assess(self.reference, sketch, self.limits),
            "sketch": sketch.to_dict(),
        }


# --- construction from the predictor's flags ---------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The predictor's monitoring flags (``--monitor-reference`` turns monitoring on)."""
    g = parser.add_argument_group("drift monitoring")
    g.add_argument("--monitor-reference", metavar="URI", default=None,
                   help="stats.json of the reference dataset (a file, a dataset run folder or a model version "
                        "folder); monitoring is off without it")
    g.add_argument("--monitor-window", metavar="N", type=int, default=DEFAULT_WINDOW,
                   help=f"requests per window (default {DEFAULT_WINDOW})")
    g.add_argument("--monitor-interval", metavar="DURATION", default="5m",
                   help="a window closes after this long too (e.g. 90s, 5m; default 5m)")
    g.add_argument("--monitor-threshold", metavar="PSI", type=float, default=DEFAULT_THRESHOLD,
                   help=f"PSI above which a band drifts (default {DEFAULT_THRESHOLD})")
    g.add_argument("--monitor-min-chips", metavar="N", type=int, default=MIN_CHIPS,
                   help=f"fewer chips in a window: insufficient data (default {MIN_CHIPS})")
    g.add_argument("--monitor-store", metavar="URI", default=None,
                   help="store for the reports (deployments/<ns>/<name>/monitoring/); none: metrics only")
    g.add_argument("--monitor-deployment", metavar="NS/NAME", default=None,
                   help="the ModelDeployment whose reports these are (with --monitor-store)")
    g.add_argument("--payload-logging", action="store_true",
                   help="keep a sample of the payloads in the store (Parquet, beside the reports)")
    g.add_argument("--payload-sample-rate", metavar="SHARE", type=float, default=DEFAULT_RATE,
                   help=f"share of chips kept (default {DEFAULT_RATE})")
    g.add_argument("--payload-max-bytes", metavar="N", type=int, default=DEFAULT_MAX_BYTES,
                   help=f"a chip's values are kept up to this size (default {DEFAULT_MAX_BYTES})")
    g.add_argument("--payload-max-records", metavar="N", type=int, default=DEFAULT_MAX_RECORDS,
                   help=f"records per window at most (default {DEFAULT_MAX_RECORDS})")


def _interval(text: str) -> float:
    """Seconds of ``--monitor-interval``: a duration as the spec writes it (``90s``, ``5m``, ``1h30m``)."""
    if not re.fullmatch(r"([0-9]+(\.[0-9]+)?(ms|s|m|h))+", text) or not duration_seconds(text):
        raise ValueError(f"--monitor-interval {text!r}: expected a positive duration such as 90s, 5m or 1h30m")
    return float(duration_seconds(text))


def _deployment(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    ns, sep, name = text.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise ValueError(f"--monitor-deployment {text!r}: expected NAMESPACE/NAME")
    return ns, name


def build_monitor(reference_uri: str, *, features: Sequence[str], classes: Sequence[str], task: str,
                  model_name: str, model_version: str, window: int = DEFAULT_WINDOW,
                  interval: float = DEFAULT_INTERVAL, limits: Limits = DEFAULT_LIMITS, store: Store | None = None,
                  deployment: tuple[str, str] | None = None, payloads: PayloadSettings | None = None) -> Monitor:
    """A started monitor of a model (its input ``features`` in channel order, ``classes``, ``task``)
    against the reference at ``reference_uri``. A missing or unusable reference raises
    :class:`ReferenceError` (and, with a store, becomes the deployment's latest report)."""
    try:
        reference = load_reference(read_reference_document(reference_uri), features=features, classes=classes,
                                   task=task, source="/".join(reference_location(reference_uri)))
    except ReferenceError as exc:
        if store is not None and deployment is not None:
            error = {
                "version": REPORT_VERSION, "status": "error", "reason": exc.reason, "message": str(exc),
                "model": {"name": model_name, "version": model_version},
                "deployment": {"namespace": deployment[0], "name": deployment[1]},
                "window": {"id": None, "start": _stamp(datetime.now(UTC))}}
            store.write_json(latest_key(*deployment, model_version), error)  # the version's, then any version's
            store.write_json(latest_key(*deployment), error)
        raise
    return Monitor(reference, model_name=model_name, model_version=model_version, window=window, interval=interval,
                   limits=limits, store=store, deployment=deployment, payloads=payloads)


def monitor_from_arguments(args: argparse.Namespace, *, model_uri: str) -> Monitor | None:
    """The monitor the flags of :func:`add_arguments` ask for (None without ``--monitor-reference``)
    of the model version at ``model_uri`` (its item says the bands, classes and task). Bad flag
    values raise ValueError naming the flag; a missing or unusable reference :class:`ReferenceError`."""
    if not args.monitor_reference:
        return None
    interval = _interval(str(args.monitor_interval))
    if args.monitor_window < 1:
        raise ValueError(f"--monitor-window {args.monitor_window}: expected at least 1 request")
    if not args.monitor_threshold > 0:
        raise ValueError(f"--monitor-threshold {args.monitor_threshold}: expected a positive PSI")
    deployment = _deployment(args.monitor_deployment)
    if (args.monitor_store is None) != (deployment is None):
        raise ValueError("--monitor-store and --monitor-deployment go together (reports need both)")
    payloads = None
    if args.payload_logging:
        if args.monitor_store is None:
            raise ValueError("--payload-logging needs --monitor-store (the records go to the store)")
        payloads = PayloadSettings(args.payload_sample_rate, args.payload_max_bytes, args.payload_max_records)
    store = Store.from_uri(args.monitor_store, shared=True) if args.monitor_store else None
    model = model_io(model_uri)
    return build_monitor(args.monitor_reference, features=model.features, classes=model.classes, task=model.task,
                         model_name=model.name, model_version=model.version, window=args.monitor_window, interval=interval,
                         limits=Limits(threshold=args.monitor_threshold, min_chips=args.monitor_min_chips,
                                       min_values=MIN_VALUES),
                         store=store, deployment=deployment, payloads=payloads)


__all__ = ["DEFAULT_INTERVAL", "DEFAULT_WINDOW", "Monitor", "add_arguments", "build_monitor", "monitor_from_arguments",
           "replica_name"]
