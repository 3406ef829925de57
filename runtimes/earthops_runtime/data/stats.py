"""Mergeable per-feature statistics of an EODataset, per split, across Ray tasks (``stats.json``).

Each Ray task keeps a :class:`DatasetStats`, feeds it its chips (:meth:`DatasetStats.update`) and
labels (:meth:`DatasetStats.update_labels`), and sends it back (it pickles); the driver merges them
(:meth:`DatasetStats.merge`, in any order) and writes :meth:`DatasetStats.to_dict` as JSON.

**Exact** (float64): counts, NaN counts, min, max, mean and standard deviation (population, ``ddof=0``),
and, for features given an accepted range, the number of values below and above it. Moments are
computed per batch about a shift near the mean (no cancellation) and combined with the parallel
update of Chan, Golub and LeVeque, so the result does not depend on how the data was batched or
merged beyond floating-point rounding (~1e-15 relative). Non-finite values (NaN = nodata, and ±inf)
count as missing and are left out of everything else.

**Approximate**: percentiles (1, 5, 25, 50, 75, 95, 99) and the histogram come from a bounded,
mergeable sample of pixels per split (:class:`PixelSample`): a *bottom-k sample* — the weighted
reservoir scheme of Efraimidis and Spirakis with unit weights — where every pixel of every chip gets
an independent uniform key and the ``sample_size`` pixels with the smallest keys are kept, with all
their feature values. A merge keeps the smallest keys of the union, so a merged sample is again a
uniform random sample without replacement of all pixels seen, whatever the batching and the merge
order. Keys are not drawn per pixel: per batch only the number of keys below the current threshold
is drawn (binomial; beta for the largest kept key), then those keys and a uniform subset of the
batch's pixels — the same distribution at a fraction of the cost, and batches after the first few
rarely touch the sample at all.

* While a split has at most ``sample_size`` pixels the sample holds them all and the percentiles are
  exact (numpy's default linear interpolation).
* Beyond, the rank error of any percentile is below ``sqrt(ln(2 / 0.01) / (2 * m))`` with 99 %
  probability (Dvoretzky-Kiefer-Wolfowitz), for ``m`` sampled values: 0.64 % of the ranks for the
  default 65,536. A feature that is nodata on a fraction ``f`` of the pixels has about
  ``(1 - f) * sample_size`` sampled values.
* The histogram has 64 equal bins between the sampled 1st and 99th percentiles (the exact min and max
  when those coincide) plus the counts below and above them; it is the sample's, scaled to the
  feature's exact count (``exact: true`` when the sample holds every value).

Samples are drawn from the object's own generator, seeded by ``seed``: the same seed and the same
updates give the same statistics. Give each Ray task its own seed (``seed=(run_seed, task_index)``):
merging two objects made with the same seed is refused, since their samples would be correlated (and
it usually means the same data was counted twice).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from earthops_runtime.data.rows import chip_rows

DEFAULT_SAMPLE_SIZE = 65_536
PERCENTILES: tuple[int, ...] = (1, 5, 25, 50, 75, 95, 99)
HISTOGRAM_BINS = 64
#: Elements per chunk of the moment pass: the float64 working buffer (1 MiB) stays in cache.
_CHUNK_ELEMENTS = 1 << 17
FORMAT_VERSION = 1
TASKS = ("classification", "multilabel", "segmentation")


def _float(v: float) -> float | None:
    """JSON-safe float: None for NaN and infinities."""
    v = float(v)
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------------------------------
# Exact moments of one feature


class FeatureStats:
    """Exact statistics of one feature (one channel): counts, min, max, mean, M2, out-of-range counts."""

    __slots__ = ("count", "nan_count", "min", "max", "mean", "m2", "value_range", "below", "above")

    def __init__(self, value_range: tuple[float, float] | None = None):
        self.count = 0  # finite values
        self.nan_count = 0  # non-finite values (nodata)
        self.min = math.inf
        self.max = -math.inf
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean
        #: An accepted range whose out-of-range values are counted exactly (``below``/``above``).
        self.value_range = None if value_range is None else (float(value_range[0]), float(value_range[1]))
        self.below = 0
        self.above = 0

    @property
    def std(self) -> float:
        """Population standard deviation (``ddof=0``)."""
        return math.sqrt(self.m2 / self.count) if self.count else math.nan

    @property
    def variance(self) -> float:
        return self.m2 / self.count if self.count else math.nan

    @property
    def total(self) -> int:
        return self.count + self.nan_count

    @property
    def nan_fraction(self) -> float:
        return self.nan_count / self.total if self.total else 0.0

    def update(self, values: np.ndarray) -> FeatureStats:
        """Add an array of values (any shape) of this feature."""
        flat = np.ascontiguousarray(values).reshape(-1)
        for i in range(0, flat.size, _CHUNK_ELEMENTS):
            _moments(flat[i:i + _CHUNK_ELEMENTS].reshape(1, 1, -1), [self])
        return self

    def _absorb(self, n: int, nan: int, mn: float, mx: float, mean: float, m2: float) -> None:
        self.nan_count += int(nan)
        if n == 0:
            return
        self.min = min(self.min, float(mn))
        self.max = max(self.max, float(mx))
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += m2 + delta * delta * (self.count * n / total)
        self.count = total

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add ``other``'s statistics to these (in place; returns self)."""
        if self.value_range != other.value_range:
            raise ValueError(f"cannot merge statistics counted against different ranges: {self.value_range} "
                             f"and {other.value_range}")
        self._absorb(other.count, other.nan_count, other.min, other.max, other.mean, other.m2)
        self.below += other.below
        self.above += other.above
        return self

    def copy(self) -> FeatureStats:
        out = FeatureStats(self.value_range)
        for slot in FeatureStats.__slots__:
            setattr(out, slot, getattr(self, slot))
        return out

    def to_dict(self) -> dict[str, Any]:
        empty = self.count == 0
        out: dict[str, Any] = {
            "count": self.count,
            "nanCount": self.nan_count,
            "nanFraction": self.nan_fraction,
            "min": None if empty else _float(self.min),
            "max": None if empty else _float(self.max),
            "mean": None if empty else _float(self.mean),
            "std": None if empty else _float(self.std),
        }
        if self.value_range is not None:
            out["range"] = {"min": self.value_range[0], "max": self.value_range[1], "below": self.below,
                            "above": self.above}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureStats:
        rng = d.get("range")
        fs = cls(None if rng is None else (rng["min"], rng["max"]))
        fs.count = int(d["count"])
        fs.nan_count = int(d.get("nanCount", 0))
        if fs.count:
            fs.min, fs.max, fs.mean = float(d["min"]), float(d["max"]), float(d["mean"])
            fs.m2 = float(d["std"]) ** 2 * fs.count
        if rng is not None:
            fs.below, fs.above = int(rng.get("below", 0)), int(rng.get("above", 0))
        return fs

    def __repr__(self) -> str:
        return (f"FeatureStats(count={self.count}, nan={self.nan_count}, min={self.min:.6g}, "
                f"max={self.max:.6g}, mean={self.mean:.6g}, std={self.std:.6g})")


def _moments(x3: np.ndarray, feats: Sequence[FeatureStats], chips: np.ndarray | None = None) -> None:
    """Add a batch ``x3`` of shape ``(N, C, P)`` (C-contiguous) to the C features' exact statistics;
    only its chips ``chips`` (indices) when given."""
    c, p = x3.shape[1:]
    n = x3.shape[0] if chips is None else len(chips)
    if n == 0 or p == 0:
        return
    floating = np.issubdtype(x3.dtype, np.floating)
    # The shift keeps the float64 sums of squares free of cancellation: the running mean, else the
    # mean of the batch's first chip.
    shift = np.empty(c)
    for i, fs in enumerate(feats):
        if fs.count:
            shift[i] = fs.mean
        else:
            first = x3[0 if chips is None else chips[0], i].astype(np.float64)
            ok = np.isfinite(first)
            shift[i] = first[ok].mean() if ok.any() else 0.0
    all_rows = x3.reshape(-1, p)
    # the (chip, channel) rows to add, in order: all of them, or those of the chosen chips
    picked = None if chips is None else (chips[:, None] * c + np.arange(c)).ravel()

    def rows_at(i: int, j: int) -> np.ndarray:
        return all_rows[i:j] if picked is None else all_rows.take(picked[i:j], axis=0)

    nrows = n * c
    row_shift = np.tile(shift, n)
    s1 = np.empty(nrows)
    s2 = np.empty(nrows)
    rmin = np.empty(nrows)
    rmax = np.empty(nrows)
    step = max(1, _CHUNK_ELEMENTS // p)
    buf = np.empty((min(step, nrows), p))
    for i in range(0, nrows, step):
        j = min(i + step, nrows)
        chunk = rows_at(i, j)
        b = buf[: j - i]
        np.subtract(chunk, row_shift[i:j, None], out=b)  # the float64 copy and the shift in one pass
        s1[i:j] = b.sum(axis=1)
        s2[i:j] = np.einsum("ij,ij->i", b, b)
        rmin[i:j] = chunk.min(axis=1)
        rmax[i:j] = chunk.max(axis=1)
    rcount = np.full(nrows, p, dtype=np.int64)
    # rows holding NaN or inf have sums that are not finite: redo them with their finite values only
    bad = np.flatnonzero(~np.isfinite(s1)) if floating else np.empty(0, np.int64)
    for r in bad:
        v = rows_at(r, r + 1)[0]
        good = v[np.isfinite(v)]
        rcount[r] = good.size
        if good.size:
            d = good.astype(np.float64) - row_shift[r]
            s1[r], s2[r] = d.sum(), d @ d
            rmin[r], rmax[r] = good.min(), good.max()
        else:
            s1[r] = s2[r] = 0.0
            rmin[r], rmax[r] = math.inf, -math.inf
    cnt = rcount.reshape(n, c).sum(axis=0)
    S1 = s1.reshape(n, c).sum(axis=0)
    S2 = s2.reshape(n, c).sum(axis=0)
    mins = rmin.reshape(n, c).min(axis=0)
    maxs = rmax.reshape(n, c).max(axis=0)
    bad_channels = set((bad % c).tolist())
    for i, fs in enumerate(feats):
        k = int(cnt[i])
        if not k:
            fs._absorb(0, n * p, math.inf, -math.inf, 0.0, 0.0)
            continue
        mean_off = S1[i] / k
        fs._absorb(k, n * p - k, mins[i], maxs[i], shift[i] + mean_off, max(S2[i] - S1[i] * mean_off, 0.0))
        if fs.value_range is not None and (mins[i] < fs.value_range[0] or maxs[i] > fs.value_range[1]):
            v = x3[:, i] if chips is None else x3[chips, i]
            lo, hi = fs.value_range
            below, above = v < lo, v > hi
            if i in bad_channels:  # -inf < lo and +inf > hi: nodata, not out of range
                fin = np.isfinite(v)
                below &= fin
                above &= fin
            fs.below += int(np.count_nonzero(below))
            fs.above += int(np.count_nonzero(above))


# --------------------------------------------------------------------------------------------------
# The pixel sample of a split


class PixelSample:
    """A bounded bottom-k sample of pixels, each with the values of all ``channels`` features."""

    __slots__ = ("size", "channels", "keys", "values")

    def __init__(self, channels: int, size: int = DEFAULT_SAMPLE_SIZE):
        if size < 1:
            raise ValueError(f"sample_size must be at least 1, not {size}")
        self.size = int(size)
        self.channels = int(channels)
        self.keys = np.empty(0, np.float64)
        self.values = np.empty((0, self.channels), np.float32)

    @property
    def threshold(self) -> float:
        """Keys at or above this cannot enter the sample."""
        return 1.0 if self.keys.size < self.size else float(self.keys.max())

    def __len__(self) -> int:
        return int(self.keys.size)

    def column(self, i: int) -> np.ndarray:
        """The sampled finite values of feature ``i`` (float64, unordered)."""
        v = self.values[:, i].astype(np.float64)
        return v[np.isfinite(v)]

    def add(self, x3: np.ndarray, rng: np.random.Generator, chips: np.ndarray | None = None) -> None:
        """Sample a batch ``(N, C, P)`` (only its chips ``chips`` when given) without drawing a key per
        pixel: draw how many of its keys fall below the threshold, those keys, and which pixels carry
        them."""
        c, p = x3.shape[1:]
        n = x3.shape[0] if chips is None else len(chips)
        total = n * p
        if total == 0:
            return
        thr, k = self.threshold, self.size
        j = total if thr >= 1.0 else int(rng.binomial(total, thr))
        if j == 0:
            return
        if j > k:
            # only the k smallest of the j keys can survive: the k-th smallest is thr * Beta(k, j - k + 1)
            # and the k - 1 below it are uniform under it
            top = thr * rng.beta(k, j - k + 1)
            keys = rng.random(k) * top
            keys[rng.integers(k)] = top
        else:
            keys = rng.random(j) * thr
        m = keys.size
        pick = np.arange(total) if m == total else np.sort(rng.choice(total, m, replace=False, shuffle=False))
        # flat index of (chip, channel, pixel) in x3; sorted pixels keep the gather close to sequential
        chip = pick // p if chips is None else chips[pick // p]
        base = chip * (c * p) + pick % p
        values = x3.reshape(-1).take(base[:, None] + np.arange(c) * p)
        self._absorb(keys, values.astype(np.float32, copy=False))

    def _absorb(self, keys: np.ndarray, values: np.ndarray) -> None:
        ks = np.concatenate([self.keys, keys])
        vs = np.concatenate([self.values, values])
        if ks.size > self.size:
            keep = np.argpartition(ks, self.size - 1)[: self.size]
            ks, vs = ks[keep], vs[keep]
        self.keys, self.values = ks, vs

    def merge(self, other: PixelSample) -> PixelSample:
        if other.channels != self.channels:
            raise ValueError(f"cannot merge samples of {self.channels} and {other.channels} features")
        self.size = min(self.size, other.size)
        self._absorb(other.keys, other.values)
        return self

    def copy(self) -> PixelSample:
        out = PixelSample(self.channels, self.size)
        out.keys, out.values = self.keys.copy(), self.values.copy()
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "keys": self.keys.tolist(),
                "values": [[_float(v) for v in row] for row in self.values.tolist()]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], channels: int) -> PixelSample:
        s = cls(channels, int(d["size"]))
        s.keys = np.asarray(d["keys"], np.float64)
        vals = np.asarray([[np.nan if v is None else v for v in row] for row in d["values"]], np.float32)
        s.values = vals.reshape(-1, channels)
        return s


def percentiles(values: np.ndarray, q: Sequence[float] = PERCENTILES) -> dict[str, float] | None:
    """``{"p1": ..., "p50": ...}`` of ``values`` (numpy's linear interpolation); None when empty."""
    if not values.size:
        return None
    got = np.percentile(values, list(q))
    return {f"p{int(p) if float(p).is_integer() else p}": float(v) for p, v in zip(q, got, strict=True)}


def histogram(values: np.ndarray, count: int, vmin: float, vmax: float, bins: int = HISTOGRAM_BINS,
              bounds: tuple[float, float] | None = None) -> dict[str, Any] | None:
    """Histogram of sampled ``values`` scaled to ``count`` values: ``bins`` equal bins between
    ``bounds`` (default: the 1st and 99th percentiles; ``vmin``/``vmax`` when those coincide), and the
    counts ``below``/``above`` the edges."""
    if not values.size:
        return None
    lo, hi = bounds if bounds is not None else np.percentile(values, [1, 99])
    if not hi > lo:
        lo, hi = vmin, vmax
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    scale = count / values.size
    return {
        "edges": edges.tolist(),
        "counts": [int(round(c * scale)) for c in counts.tolist()],
        "below": int(round(np.count_nonzero(values < lo) * scale)),
        "above": int(round(np.count_nonzero(values > hi) * scale)),
        "exact": values.size == count,
    }


# --------------------------------------------------------------------------------------------------
# Labels


class LabelCounts:
    """Label counts of one split.

    * classification: ``samples`` chips, ``counts[label]`` chips per label;
    * multilabel: ``samples`` chips, ``counts[class index]`` chips carrying the class, ``unlabelled``
      chips with none;
    * segmentation: ``samples`` chips, ``pixels`` labelled pixels, ``counts[class]`` pixels per class,
      ``ignored`` pixels equal to ``ignore_index``.

    Integer labels are class indices (``keys == "index"``, counted under ``"0"``, ``"1"``...);
    string labels are class names (``keys == "name"``)."""

    __slots__ = ("task", "keys", "samples", "counts", "unlabelled", "pixels", "ignored", "width")

    def __init__(self, task: str):
        if task not in TASKS:
            raise ValueError(f"unknown label task {task!r}; accepted: {', '.join(TASKS)}")
        self.task = task
        self.keys: str | None = None
        self.samples = 0
        self.counts: dict[str, int] = {}
        self.unlabelled = 0
        self.pixels = 0
        self.ignored = 0
        self.width: int | None = None

    def update(self, labels: Any, ignore_index: int | None = None) -> LabelCounts:
        arr = np.asarray(labels)
        if self.task == "classification":
            if arr.ndim != 1:
                raise ValueError(f"classification labels must be one per chip, shape (N,), not {arr.shape}")
            self.samples += arr.shape[0]
            self._count(arr)
        elif self.task == "multilabel":
            if arr.ndim != 2:
                raise ValueError(f"multilabel labels must be 0/1 vectors, shape (N, classes), "
                                 f"not {arr.shape}")
            if arr.size and not np.isin(arr, (0, 1)).all():
                raise ValueError("multilabel labels must be 0/1 vectors")
            if self.width is not None and arr.shape[1] != self.width:
                raise ValueError(f"multilabel vectors of width {arr.shape[1]} after width {self.width}")
            self.width = arr.shape[1]
            self.keys = "index"
            self.samples += arr.shape[0]
            pos = arr.astype(bool)
            self.unlabelled += int(np.count_nonzero(~pos.any(axis=1)))
            for k, v in enumerate(pos.sum(axis=0)):
                self.counts[str(k)] = self.counts.get(str(k), 0) + int(v)
        else:
            if arr.ndim < 2:
                raise ValueError(f"segmentation labels must be masks, shape (N, H, W), not {arr.shape}")
            if arr.ndim == 2:
                arr = arr[None]
            self.samples += arr.shape[0]
            flat = arr.reshape(-1)
            if flat.dtype in (np.uint8, np.uint16):  # class maps: counted in slices
                self._count_small(flat, ignore_index)
                return self
            if ignore_index is not None:
                keep = flat != ignore_index
                self.ignored += int(flat.size - np.count_nonzero(keep))
                flat = flat[keep]
            self.pixels += flat.size
            self._count(flat)
        return self

    def _count_small(self, flat: np.ndarray, ignore_index: int | None) -> None:
        # bincount copies its input to int64: in slices, so a scene's class map is never 8x in memory
        bc = np.zeros(1 << (8 * flat.dtype.itemsize), np.int64)
        for i in range(0, flat.size, _CHUNK_ELEMENTS * 8):
            bc += np.bincount(flat[i:i + _CHUNK_ELEMENTS * 8], minlength=bc.size)
        if ignore_index is not None and 0 <= ignore_index < bc.size:
            self.ignored += int(bc[ignore_index])
            bc[ignore_index] = 0
        if self.keys is not None and self.keys != "index":
            raise ValueError(f"labels given as class {_KEY_WORDS['index']} after class {_KEY_WORDS[self.keys]}")
        self.keys = "index"
        values = np.flatnonzero(bc)
        self.pixels += int(bc.sum())
        for k, v in zip(values.tolist(), bc[values].tolist(), strict=True):
            self.counts[str(k)] = self.counts.get(str(k), 0) + int(v)

    def _count(self, flat: np.ndarray) -> None:
        if flat.dtype.kind in "US" or flat.dtype == object:
            kind = "name"
            values, counts = np.unique(flat.astype(str), return_counts=True)
            keys = [str(v) for v in values]
        else:
            kind = "index"
            if flat.dtype.kind == "f":
                if not np.all(np.isfinite(flat)) or not np.all(flat == np.round(flat)):
                    raise ValueError("class labels must be integers (class indices) or class names")
                flat = flat.astype(np.int64)
            elif flat.dtype.kind == "b":
                flat = flat.astype(np.int64)
            if flat.size and flat.min() >= 0 and flat.max() < 1 << 16:
                bc = np.bincount(flat.astype(np.intp, copy=False))
                values = np.flatnonzero(bc)
                counts = bc[values]
            else:
                values, counts = np.unique(flat, return_counts=True)
            keys = [str(int(v)) for v in values]
        if self.keys is not None and self.keys != kind:
            raise ValueError(f"labels given as class {_KEY_WORDS[kind]} after class {_KEY_WORDS[self.keys]}")
        self.keys = kind
        for k, v in zip(keys, counts, strict=True):
            self.counts[k] = self.counts.get(k, 0) + int(v)

    def merge(self, other: LabelCounts) -> LabelCounts:
        if other.task != self.task:
            raise ValueError(f"cannot merge {self.task} label counts with {other.task} ones")
        if self.keys and other.keys and self.keys != other.keys:
            raise ValueError(f"cannot merge labels given as class {_KEY_WORDS[self.keys]} with class "
                             f"{_KEY_WORDS[other.keys]}")
        if self.width is not None and other.width is not None and self.width != other.width:
            raise ValueError(f"cannot merge multilabel vectors of width {self.width} and {other.width}")
        self.keys = self.keys or other.keys
        self.width = self.width if self.width is not None else other.width
        self.samples += other.samples
        self.unlabelled += other.unlabelled
        self.pixels += other.pixels
        self.ignored += other.ignored
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        return self

    def to_dict(self) -> dict[str, Any]:
        def order(k: str):
            return (0, int(k), "") if self.keys == "index" else (1, 0, k)

        out: dict[str, Any] = {"task": self.task, "keys": self.keys or "index", "samples": self.samples,
                               "counts": {k: self.counts[k] for k in sorted(self.counts, key=order)}}
        if self.task == "multilabel":
            out["unlabelled"] = self.unlabelled
            out["width"] = self.width
        if self.task == "segmentation":
            out["pixels"] = self.pixels
            out["ignored"] = self.ignored
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelCounts:
        lc = cls(d["task"])
        lc.keys = d.get("keys")
        lc.samples = int(d.get("samples", 0))
        lc.counts = {str(k): int(v) for k, v in d.get("counts", {}).items()}
        lc.unlabelled = int(d.get("unlabelled", 0))
        lc.pixels = int(d.get("pixels", 0))
        lc.ignored = int(d.get("ignored", 0))
        lc.width = d.get("width")
        return lc


_KEY_WORDS = {"index": "indices", "name": "names"}


def _infer_task(labels: Any) -> str:
    ndim = np.ndim(labels)
    return {1: "classification", 2: "multilabel"}.get(ndim, "segmentation")


# --------------------------------------------------------------------------------------------------
# A dataset


class DatasetStats:
    """Per split: exact per-feature statistics, a pixel sample (percentiles, histograms), chip and label
    counts. Mergeable in any order, picklable (Ray), JSON round trip."""

    def __init__(self, seed: int | Sequence[int] = 0, *, sample_size: int = DEFAULT_SAMPLE_SIZE,
                 ranges: Mapping[str, tuple[float, float]] | None = None):
        """``seed``: an int or a sequence of ints, one per task (``(run_seed, task_index)``).
        ``ranges``: feature name -> accepted ``(min, max)``; the values outside are then counted
        exactly (the pipeline passes ``spec.validation.bandRanges``)."""
        self.seed: tuple[int, ...] = (tuple(int(s) for s in seed) if isinstance(seed, Sequence | np.ndarray)
                                      else (int(seed),))
        if sample_size < 1:
            raise ValueError(f"sample_size must be at least 1, not {sample_size}")
        self.sample_size = int(sample_size)
        self.ranges = {k: (float(v[0]), float(v[1])) for k, v in (ranges or {}).items()}
        self._rng = np.random.default_rng(list(self.seed))
        self._streams: set[tuple[int, ...]] = {self.seed}
        self.features: dict[str, dict[str, FeatureStats]] = {}
        self.samples: dict[str, PixelSample] = {}
        #: Percentiles and histograms of summaries read back without their sample (from_dict).
        self._frozen: dict[str, dict[str, dict[str, Any]]] = {}
        self.chips: dict[str, int] = {}
        self.labels: dict[str, LabelCounts] = {}

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys([*self.chips, *self.features, *self.labels]))

    def names(self, split: str) -> list[str]:
        return list(self.features.get(split, {}))

    def update(self, split: str, chips: np.ndarray, names: Sequence[str], *,
               rows: np.ndarray | Sequence[int] | None = None) -> DatasetStats:
        """Add chips ``(N, C, H, W)`` (or one chip ``(C, H, W)``) whose channels are ``names``; only
        the chips ``rows`` (indices) of them when given, without gathering them first."""
        x = np.asarray(chips)
        if x.ndim == 3:
            x = x[None]
        if rows is not None:
            rows = chip_rows(rows, len(x))
        names = list(names)
        if x.ndim != 4 or x.shape[1] != len(names):
            raise ValueError(f"chips of shape {np.shape(chips)} do not match {len(names)} feature names: "
                             "expected (N, C, H, W) or (C, H, W) with C the number of names")
        if len(set(names)) != len(names):
            raise ValueError(f"feature names repeat: {names}")
        if split in self._frozen:
            raise ValueError(f"split {split!r} was read back without its sample: it cannot take more chips")
        feats = self.features.setdefault(split, {})
        if feats and list(feats) != names:
            raise ValueError(f"split {split!r} has features {list(feats)}; this batch has {names}")
        for name in names:
            if name not in feats:
                feats[name] = FeatureStats(self.ranges.get(name))
        self.chips[split] = self.chips.get(split, 0) + (x.shape[0] if rows is None else len(rows))
        x3 = np.ascontiguousarray(x).reshape(*x.shape[:2], math.prod(x.shape[2:]))  # -1 fails on no chips
        _moments(x3, [feats[n] for n in names], rows)
        sample = self.samples.get(split)
        if sample is None:
            sample = self.samples[split] = PixelSample(len(names), self.sample_size)
        sample.add(x3, self._rng, rows)
        return self

    def update_labels(self, split: str, labels: Any, task: str | None = None,
                      ignore_index: int | None = None) -> DatasetStats:
        """Count labels: ``(N,)`` class indices or names (classification), ``(N, K)`` 0/1 vectors
        (multilabel), ``(N, H, W)`` class masks (segmentation; ``ignore_index`` pixels counted apart).
        The task is inferred from the number of dimensions unless given."""
        task = task or _infer_task(labels)
        lc = self.labels.get(split)
        if lc is None:
            lc = self.labels[split] = LabelCounts(task)
        elif lc.task != task:
            raise ValueError(f"split {split!r} has {lc.task} labels; these are {task}")
        lc.update(labels, ignore_index=ignore_index)
        return self

    def merge(self, other: DatasetStats) -> DatasetStats:
        """Add ``other`` to these statistics (in place; returns self). Any order gives the same result."""
        overlap = self._streams & other._streams
        if overlap:
            raise ValueError(f"both statistics were made with seed {sorted(overlap)[0]}: their samples would "
                             "be correlated, and usually the same data was counted twice; give each task its "
                             "own seed, e.g. DatasetStats(seed=(run_seed, task_index))")
        if self.ranges != other.ranges:
            raise ValueError(f"cannot merge statistics counted against different ranges: {self.ranges} and "
                             f"{other.ranges}")
        both = [s for s in other.features if s in self.features]
        frozen = [s for s in both if s in self._frozen or s in other._frozen]
        if frozen:
            raise ValueError(f"split {frozen[0]!r} was read back without its sample and cannot be merged "
                             "(write it with to_dict(include_sample=True) to merge it later)")
        for split, feats in other.features.items():
            mine = self.features.get(split)
            if mine and feats and list(mine) != list(feats):
                raise ValueError(f"split {split!r} has features {list(mine)} here and {list(feats)} there")
            if not mine:
                self.features[split] = {n: fs.copy() for n, fs in feats.items()}
                if split in other.samples:
                    self.samples[split] = other.samples[split].copy()
                if split in other._frozen:
                    self._frozen[split] = other._frozen[split]
                continue
            for name, fs in feats.items():
                mine[name].merge(fs)
            if split in other.samples:
                if split in self.samples:
                    self.samples[split].merge(other.samples[split])
                else:
                    self.samples[split] = other.samples[split].copy()
        for split, n in other.chips.items():
            self.chips[split] = self.chips.get(split, 0) + n
        for split, lc in other.labels.items():
            if split in self.labels:
                self.labels[split].merge(lc)
            else:
                self.labels[split] = LabelCounts.from_dict(lc.to_dict())
        self._streams |= other._streams
        self.sample_size = min(self.sample_size, other.sample_size)
        return self

    def feature_dict(self, split: str, name: str) -> dict[str, Any]:
        """One feature's JSON entry: exact statistics, percentiles, histogram, sampled values."""
        fs = self.features[split][name]
        out = fs.to_dict()
        if split in self._frozen:
            out.update(self._frozen[split].get(name, {}))
            return out
        sample = self.samples.get(split)
        col = sample.column(list(self.features[split]).index(name)) if sample is not None else np.empty(0)
        pct = percentiles(col)
        out["percentiles"] = pct
        out["histogram"] = histogram(col, fs.count, fs.min, fs.max,
                                     bounds=(pct["p1"], pct["p99"]) if pct else None)
        out["sampled"] = int(col.size)
        return out

    def to_dict(self, include_sample: bool = False) -> dict[str, Any]:
        """JSON-ready: ``{"version", "seed", "sampleSize", "percentiles", "histogramBins", "ranges",
        "splits": {split: {"chips", "features": {name: {count, nanCount, nanFraction, min, max, mean,
        std, percentiles, histogram, sampled, [range]}}, "labels": {...}}}}``. ``include_sample`` adds each
        split's pixel sample (large: ``sampleSize`` x features values), so that :meth:`from_dict` gives
        back an object that merges and takes more data."""
        splits: dict[str, Any] = {}
        for split in self.splits:
            entry: dict[str, Any] = {
                "chips": self.chips.get(split, 0),
                "features": {n: self.feature_dict(split, n) for n in self.features.get(split, {})},
            }
            if split in self.labels:
                entry["labels"] = self.labels[split].to_dict()
            if include_sample:
                if split in self._frozen:
                    raise ValueError(f"split {split!r} was read back without its sample")
                if split in self.samples:
                    entry["sample"] = self.samples[split].to_dict()
            splits[split] = entry
        return {
            "version": FORMAT_VERSION,
            "seed": list(self.seed),
            "sampleSize": self.sample_size,
            "percentiles": list(PERCENTILES),
            "histogramBins": HISTOGRAM_BINS,
            "ranges": {k: list(v) for k, v in self.ranges.items()},
            "splits": splits,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetStats:
        """Read :meth:`to_dict` back. Written with ``include_sample=True`` the result merges and takes
        more data like the original; without, its splits are read-only summaries (exact statistics,
        frozen percentiles and histograms)."""
        if d.get("version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ValueError(f"statistics format version {d.get('version')} is not {FORMAT_VERSION}")
        ds = cls(d.get("seed", [0]), sample_size=int(d.get("sampleSize", DEFAULT_SAMPLE_SIZE)),
                 ranges={k: tuple(v) for k, v in d.get("ranges", {}).items()})
        for split, entry in d.get("splits", {}).items():
            ds.chips[split] = int(entry.get("chips", 0))
            feats = entry.get("features", {})
            if feats:
                ds.features[split] = {n: FeatureStats.from_dict(f) for n, f in feats.items()}
                if "sample" in entry:
                    ds.samples[split] = PixelSample.from_dict(entry["sample"], len(feats))
                else:
                    ds._frozen[split] = {n: {k: f.get(k) for k in ("percentiles", "histogram", "sampled")}
                                         for n, f in feats.items()}
            if "labels" in entry:
                ds.labels[split] = LabelCounts.from_dict(entry["labels"])
        return ds

    def __repr__(self) -> str:
        parts = ", ".join(f"{s}: {self.chips.get(s, 0)} chips" for s in self.splits)
        return f"DatasetStats(seed={self.seed}, {parts or 'empty'})"


def merge_all(parts: Iterable[DatasetStats]) -> DatasetStats:
    """Merge statistics (e.g. the results of Ray tasks) into a new object; the parts are unchanged."""
    parts = list(parts)
    if not parts:
        raise ValueError("nothing to merge")
    total = DatasetStats(parts[0].seed, sample_size=parts[0].sample_size, ranges=parts[0].ranges)
    total._streams = set()
    for p in parts:
        total.merge(p)
    return total


# --------------------------------------------------------------------------------------------------
# For training


def normalization(stats: Mapping[str, Any] | DatasetStats, split: str = "train",
                  names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(mean, std)`` (float32) of ``split`` for standardising inputs, in the order of
    ``names`` (default: the split's features). A constant feature gets std 1 and an empty one mean 0
    and std 1, so ``(x - mean) / std`` stays finite."""
    d = stats.to_dict() if isinstance(stats, DatasetStats) else stats
    splits = d.get("splits", {})
    if split not in splits:
        raise KeyError(f"no statistics for split {split!r}; splits: {sorted(splits)}")
    feats = splits[split].get("features", {})
    names = list(feats) if names is None else list(names)
    missing = [n for n in names if n not in feats]
    if missing:
        raise KeyError(f"no statistics for features {missing} in split {split!r}; features: {list(feats)}")
    mean = np.array([_or(feats[n].get("mean"), 0.0) for n in names], np.float64)
    std = np.array([_or(feats[n].get("std"), 1.0) for n in names], np.float64)
    std[~(std > 0)] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
