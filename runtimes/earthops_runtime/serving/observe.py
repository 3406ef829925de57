"""The one place every decoded input batch passes: observers (drift monitoring) see it here.

After a request's (or a scene chunk's) outputs are computed, the predictor hands an
:class:`ObservedBatch` to :meth:`Observers.publish`, which calls each configured observer's
``observe(batch)`` on a worker thread of its own: the response never waits for an observer, and an
observer that raises is logged and counted (``earthops_serving_observer_errors_total``), never failing
a request. Observers slower than the traffic lose batches rather than memory: beyond
``MAX_PENDING`` waiting batches, or ``MAX_PENDING_BYTES`` of their features and outputs, new ones are
dropped and counted (``earthops_serving_observer_dropped_total``). An observer is any object with ``observe(batch) ->
None`` (duck-typed: a monitoring package does not import serving).

What an observer gets (frozen, arrays read-only):

* ``features``: float32 ``[N, C, H, W]`` after feature derivation, BEFORE normalisation, in the
  model's feature order ``feature_names`` (model-ready tensors sent by a client are de-normalised
  with the card's statistics, so every input form reaches an observer in the same units as the
  training data's ``stats.json``).
* ``outputs``: probabilities, ``[N, K]`` (classification: softmax, multilabel: sigmoid) or
  ``[N, K, H, W]`` (segmentation: softmax over classes); ``class_names`` names the K classes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from earthops_runtime.serving import metrics

log = logging.getLogger(__name__)
#: Batches waiting for slow observers at most; more are dropped (and counted), never queued without bound.
MAX_PENDING = 64
#: Bytes of features and outputs waiting for slow observers at most (a batch of scene chips is large).
MAX_PENDING_BYTES = 256 << 20


@dataclass(frozen=True)
class ObservedBatch:
    """One decoded input batch and what the model answered for it (see the module docstring)."""

    model_name: str
    model_version: str
    features: np.ndarray
    feature_names: tuple[str, ...]
    outputs: np.ndarray
    class_names: tuple[str, ...]
    task: str
    request_id: str | None = None


@runtime_checkable
class Observer(Protocol):
    """Anything with ``observe(batch)``; it runs off the request path and may take its time."""

    def observe(self, batch: ObservedBatch) -> None: ...


def _frozen(a: np.ndarray) -> np.ndarray:
    out = np.array(a, copy=True)  # the caller's buffers are reused or freed after the response
    out.flags.writeable = False
    return out


class Observers:
    """The configured observers and the one thread that calls them, in order, batch after batch."""

    def __init__(self, observers: Iterable[object] = (), *, max_pending: int = MAX_PENDING,
                 max_pending_bytes: int = MAX_PENDING_BYTES):
        self.observers: tuple[object, ...] = tuple(observers)
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self._pending = 0
        self._pending_bytes = 0
        for o in self.observers:
            if not callable(getattr(o, "observe", None)):
                raise TypeError(f"observer {o!r} has no observe(batch) method")
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.observers)

    def publish(self, *, model_name: str, model_version: str, features: np.ndarray, feature_names: Sequence[str],
                outputs: np.ndarray, class_names: Sequence[str], task: str, request_id: str | None) -> None:
        """Queue one batch for every observer; returns at once (nothing to do without observers)."""
        if not self.observers:
            return
        batch = ObservedBatch(model_name=model_name, model_version=model_version,
                              features=_frozen(features.astype(np.float32, copy=False)),
                              feature_names=tuple(feature_names), outputs=_frozen(outputs),
                              class_names=tuple(class_names), task=task, request_id=request_id)
        size = batch.features.nbytes + batch.outputs.nbytes
        with self._lock:
            if self._pending >= self.max_pending or self._pending_bytes + size > self.max_pending_bytes:
                metrics.OBSERVER_DROPPED.labels(model=model_name).inc()
                return
            self._pending += 1
            self._pending_bytes += size
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="earthops-observers")
            self._pool.submit(self._deliver, batch, size)

    def _deliver(self, batch: ObservedBatch, size: int) -> None:
        try:
            self.notify(batch)
        finally:
            with self._lock:
                self._pending -= 1
                self._pending_bytes -= size

    def notify(self, batch: ObservedBatch) -> None:
        """Call every observer with ``batch`` (on the caller's thread); failures are logged and counted."""
        for o in self.observers:
            try:
                o.observe(batch)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - an observer never fails a request or stops the others
                name = type(o).__name__
                metrics.OBSERVER_ERRORS.labels(observer=name).inc()
                log.exception("observer %s failed on a batch of %s %s", name, batch.model_name, batch.model_version)

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every queued batch was handed to the observers (tests, shutdown)."""
        with self._lock:
            pool = self._pool
        if pool is not None:
            pool.submit(lambda: None).result(timeout=timeout)

    def close(self) -> None:
        """Deliver the queued batches, then ``close()`` every observer that has one (a drift monitor
        closes its last window); a failing close is logged and counted like a failing observe."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        for o in self.observers:
            close = getattr(o, "close", None)
            if not callable(close):
                continue
            try:
                close()
            except Exception:  # noqa: BLE001 - one observer's close never stops the others'
                name = type(o).__name__
                metrics.OBSERVER_ERRORS.labels(observer=name).inc()
                log.exception("observer %s failed to close", name)


__all__ = ["ObservedBatch", "Observer", "Observers"]
