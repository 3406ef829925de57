"""Observers for the predictor's observation hook in tests: one that keeps every batch, one that fails."""

from __future__ import annotations

from earthops_runtime.serving.observe import ObservedBatch


class Recorder:
    """Keeps every batch it is handed."""

    def __init__(self):
        self.batches: list[ObservedBatch] = []

    def observe(self, batch: ObservedBatch) -> None:
        self.batches.append(batch)


class Broken:
    """An observer with a bug: every call raises."""

    def observe(self, batch: ObservedBatch) -> None:
        raise RuntimeError("observer bug")
