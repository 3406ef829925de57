"""Mergeable window sketches: what one monitoring window saw, per band, in fixed-size numbers.

Per band, against the reference's own bins: counts in the K bins plus below and above them, the sum
of the values below and above (so the tails keep their mean), exact moments
(:class:`earthops_runtime.data.stats.FeatureStats`: count, NaN count, min, max, mean, M2). Per chip,
the band means (a bounded uniform sample of chips, :class:`earthops_runtime.data.stats.PixelSample`
over chips). Predicted class counts. Two sketches over the same reference merge into the sketch of
the union (counts add, moments combine exactly, chip samples merge as bottom-k samples), so the
windows of several replicas combine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from earthops_runtime.data.stats import FeatureStats, PixelSample
from earthops_runtime.monitoring.reference import Reference

#: Chips whose band means a window keeps (uniformly sampled beyond).
CHIP_SAMPLE = 20_000


def _bin_counts(x: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Counts of the finite values of ``x`` in ``[below, bins..., above]`` (``edges`` equal-width:
    an index by arithmetic, not a search) and the sums of the values below and above."""
    x = x[np.isfinite(x)]
    k = edges.size - 1
    lo, hi = edges[0], edges[-1]
    idx = np.floor((x - lo) * (k / (hi - lo))).astype(np.int64)
    np.clip(idx, -1, k, out=idx)
    idx[x == hi] = k - 1  # the last bin is closed, as numpy.histogram's
    counts = np.bincount(idx + 1, minlength=k + 2).astype(np.int64)
    below, above = x < lo, x > hi
    return counts, float(x[below].sum()), float(x[above].sum())


def predicted_counts(outputs: np.ndarray, n_classes: int, task: str) -> tuple[np.ndarray, int]:
    """Per class: chips (classification), chips carrying it (multilabel, probability > 0.5) or pixels
    (segmentation) predicted as that class; and how many chips or pixels were counted."""
    out = np.asarray(outputs)
    if task == "multilabel":
        return (out > 0.5).sum(axis=0).astype(np.int64)[:n_classes], int(out.shape[0])
    pred = out.argmax(axis=1).reshape(-1)
    return np.bincount(pred, minlength=n_classes).astype(np.int64)[:n_classes], int(pred.size)


class WindowSketch:
    """The mergeable summary of one window over a :class:`Reference` (see the module docstring)."""

    def __init__(self, reference: Reference, *, seed: int | tuple[int, ...] = 0, chip_sample: int = CHIP_SAMPLE):
        self.reference = reference
        c = len(reference.bands)
        self.requests = 0
        self.chips = 0
        self.bins = np.zeros((c, reference.bands[0].edges.size + 1), np.int64)
        self.tail_sums = np.zeros((c, 2))
        self.moments = [FeatureStats() for _ in range(c)]
        self.chip_means = PixelSample(c, chip_sample)
        self.classes = np.zeros(len(reference.classes), np.int64)
        self.predicted = 0  # chips, or pixels for segmentation
        self._rng = np.random.default_rng(seed)

    def update(self, features: np.ndarray, outputs: np.ndarray | None = None) -> WindowSketch:
        """Add one request's batch: ``features`` (N, C, H, W) in the reference's band order, before
        normalisation; ``outputs`` its probabilities (N, K) or (N, K, H, W)."""
        x = np.asarray(features)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != len(self.reference.bands):
            raise ValueError(f"features of shape {x.shape}: expected (N, {len(self.reference.bands)}, H, W) for "
                             f"the bands {', '.join(self.reference.names)}")
        n = x.shape[0]
        self.requests += 1
        self.chips += n
        x3 = np.ascontiguousarray(x).reshape(n, x.shape[1], -1)
        for i, band in enumerate(self.reference.bands):
            values = x3[:, i].reshape(-1)
            counts, below, above = _bin_counts(values, band.edges)
            self.bins[i] += counts
            self.tail_sums[i] += (below, above)
            self.moments[i].update(values)
        if n:
            with np.errstate(invalid="ignore"):
                # an all-nodata chip has no mean: NaN, left out of the tests
                valid = np.isfinite(x3)
                means = np.where(valid, x3, 0).sum(axis=2) / np.maximum(valid.sum(axis=2), 1)
                means[~valid.any(axis=2)] = np.nan
            self.chip_means.add(means.T[None].astype(np.float32), self._rng)
        if outputs is not None and self.classes.size:
            counts, counted = predicted_counts(outputs, self.classes.size, self.reference.task)
            self.classes += counts
            self.predicted += counted
        return self

    def merge(self, other: WindowSketch) -> WindowSketch:
        """Add ``other`` (a window over the same reference) to this one, in place."""
        if other.reference.names != self.reference.names or any(
                not np.array_equal(a.edges, b.edges) for a, b in zip(self.reference.bands, other.reference.bands,
                                                                      strict=True)):
            raise ValueError("cannot merge window sketches over different references")
        self.requests += other.requests
        self.chips += other.chips
        self.bins += other.bins
        self.tail_sums += other.tail_sums
        for mine, theirs in zip(self.moments, other.moments, strict=True):
            mine.merge(theirs)
        self.chip_means.merge(other.chip_means)
        self.classes += other.classes
        self.predicted += other.predicted
        return self

    def chip_mean_values(self) -> np.ndarray:
        """The sampled chips' band means, (chips, C) float64 (NaN: a chip without values in a band)."""
        return self.chip_means.values.astype(np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; with the reference, :meth:`from_dict` reads it back (another replica's window)."""
        return {
            "bands": list(self.reference.names),
            "requests": self.requests,
            "chips": self.chips,
            "bins": self.bins.tolist(),
            "tailSums": self.tail_sums.tolist(),
            "moments": [m.to_dict() for m in self.moments],
            "chipMeans": self.chip_means.to_dict(),
            "classes": self.classes.tolist(),
            "predicted": self.predicted,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], reference: Reference, *, seed: int | tuple[int, ...] = 0) -> WindowSketch:
        if list(d["bands"]) != list(reference.names):
            raise ValueError(f"a window over bands {list(d['bands'])} is not over the reference's "
                             f"{list(reference.names)}")
        s = cls(reference, seed=seed)
        s.requests, s.chips, s.predicted = int(d["requests"]), int(d["chips"]), int(d["predicted"])
        s.bins = np.asarray(d["bins"], np.int64)
        s.tail_sums = np.asarray(d["tailSums"], np.float64)
        s.moments = [FeatureStats.from_dict(m) for m in d["moments"]]
        s.chip_means = PixelSample.from_dict(d["chipMeans"], len(reference.bands))
        s.classes = np.asarray(d["classes"], np.int64)
        return s


__all__ = ["CHIP_SAMPLE", "WindowSketch", "predicted_counts"]
