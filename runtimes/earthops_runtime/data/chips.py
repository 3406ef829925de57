"""Cut a scene into chips on its grid, drop the unusable ones, and assign splits.

* :func:`chip_windows` — the full chips of a grid (no partial chip at the right/bottom edge),
  row-major, deterministic.
* :class:`ChipFilter` — drops a chip with too many nodata pixels (a pixel is nodata when any channel is
  NaN) or too much cloud (given a cloud mask), counting each reason.
* :func:`cut_chips` — reads the scene in blocks of ``chips_per_block`` x ``chips_per_block`` chips (one
  windowed read per block, so memory stays bounded by the block, whatever the scene size) and yields a
  :class:`ChipBatch` of the chips kept in each block. Chip ids are stable:
  ``<scene-id>_r<row>_c<col>``, with the chip's top-left pixel row and column on the scene grid.
  Batches come block by block (blocks in row-major order, chips row-major inside a block).
* :func:`assign_split` — train/validation/test from a stable hash (blake2b, never Python's salted
  ``hash()``): of (seed, chip id) for ``random``; of (seed, block of the chip centre) for
  ``spatial-blocks``, so neighbouring chips share a split and do not leak across it.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rasterio.windows import Window

from earthops_runtime.data.grid import TargetGrid

SPLITS = ("train", "validation", "test")
#: Sentinel-2 Scene Classification (SCL) classes counted as cloud: cloud shadow (3), cloud medium (8)
#: and high (9) probability, thin cirrus (10).
S2_SCL_CLOUD_CLASSES = (3, 8, 9, 10)


# --------------------------------------------------------------------------------------------------
# Windows


def chip_count(length: int, size: int, stride: int) -> int:
    """Full chips along one axis of ``length`` pixels."""
    if size <= 0 or stride <= 0:
        raise ValueError(f"chip size and stride must be positive, got {size} and {stride}")
    return 0 if length < size else (length - size) // stride + 1


def chip_windows(grid: TargetGrid, size: int, stride: int | None = None) -> list[Window]:
    """Every full ``size`` x ``size`` chip of ``grid`` every ``stride`` pixels (default ``size``),
    row-major from the top-left corner."""
    stride = size if stride is None else stride
    rows, cols = chip_count(grid.height, size, stride), chip_count(grid.width, size, stride)
    return [Window(j * stride, i * stride, size, size) for i in range(rows) for j in range(cols)]


def chip_id(scene_id: str, row: int, col: int) -> str:
    """``<scene-id>_r<row>_c<col>``: the chip whose top-left pixel is (row, col) of the scene grid."""
    return f"{scene_id}_r{int(row)}_c{int(col)}"


def chip_centre(grid: TargetGrid, row: int, col: int, size: int) -> tuple[float, float]:
    """Grid-CRS ``(x, y)`` of the centre of the chip at (row, col)."""
    t = grid.transform
    return float(t.c + t.a * (col + size / 2.0)), float(t.f + t.e * (row + size / 2.0))


# --------------------------------------------------------------------------------------------------
# Filter


@dataclass
class ChipFilter:
    """Keep/drop rules for chips; counts what it kept and why it dropped."""

    max_nodata_fraction: float = 0.1
    max_cloud_fraction: float = 1.0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_spec(cls, chips: Any) -> ChipFilter:
        """From the spec's ``chips`` (``maxNodataFraction``, ``maxCloudFraction``)."""
        return cls(max_nodata_fraction=float(chips.max_nodata_fraction),
                   max_cloud_fraction=float(chips.max_cloud_fraction))

    @staticmethod
    def nodata_fraction(chip: np.ndarray) -> float:
        """Share of pixels where any channel is NaN (``chip``: (C, h, w) or (h, w))."""
        bad = np.isnan(chip)
        if bad.ndim == 3:
            bad = bad.any(axis=0)
        return float(bad.mean()) if bad.size else 0.0

    @staticmethod
    def cloud_fraction(cloud_mask: np.ndarray | None) -> float:
        """Share of pixels the mask marks as cloud (non-zero; NaN counts as not cloud)."""
        if cloud_mask is None or cloud_mask.size == 0:
            return 0.0
        m = np.asarray(cloud_mask)
        if m.dtype != bool:
            m = np.nan_to_num(m.astype(np.float64), nan=0.0) != 0
        return float(m.mean())

    def decide(self, chip: np.ndarray, cloud_mask: np.ndarray | None = None) -> str | None:
        """The reason to drop the chip (``nodata``, ``cloud``), or None to keep it. Counts nothing."""
        if self.nodata_fraction(chip) > self.max_nodata_fraction:
            return "nodata"
        if cloud_mask is not None and self.cloud_fraction(cloud_mask) > self.max_cloud_fraction:
            return "cloud"
        return None

    def __call__(self, chip: np.ndarray, cloud_mask: np.ndarray | None = None) -> bool:
        """Keep the chip? Counts the outcome."""
        reason = self.decide(chip, cloud_mask)
        if reason is None:
            self.kept += 1
            return True
        self.dropped[reason] += 1
        return False

    def counts(self) -> dict[str, Any]:
        return {"kept": self.kept, "dropped": dict(sorted(self.dropped.items()))}


# --------------------------------------------------------------------------------------------------
# Cutting


@dataclass
class ChipBatch:
    """The kept chips of one block of a scene."""

    scene_id: str
    ids: list[str]
    #: Top-left pixel row / column of each chip on the scene grid, (N,) int64.
    rows: np.ndarray
    cols: np.ndarray
    #: (N, C, size, size) float32, physical values, NaN nodata.
    arrays: np.ndarray
    #: (N, size, size) int32 for raster/vector labels (-1 unlabelled), a list of the scene's class (or
    #: class list) per chip for property labels, None without labels.
    labels: Any
    #: (N, 2) float64 chip-centre ``(x, y)`` in the grid CRS.
    centres: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def scl_cloud_mask(reader: Any, asset: str = "SCL", classes: Sequence[int] = S2_SCL_CLOUD_CLASSES
                   ) -> Callable[[Window], np.ndarray]:
    """A ``cloud_mask`` for :func:`cut_chips` from a Sentinel-2 Scene Classification asset."""
    wanted = np.asarray(sorted(classes), dtype=np.float32)

    def mask(window: Window) -> np.ndarray:
        return np.isin(reader.read_asset(asset, window, resampling="nearest"), wanted)

    return mask


def cut_chips(reader: Any, size: int, stride: int | None = None, *, chip_filter: ChipFilter | None = None,
              cloud_mask: Callable[[Window], np.ndarray] | None = None,
              chips_per_block: int = 8, extra_channels: int = 0, reuse_buffers: bool = False) -> Iterator[ChipBatch]:
    """Chips of the reader's scene, block by block.

    ``reader``: a :class:`~earthops_runtime.data.readers.SceneReader` (``grid``, ``scene``, ``bands``,
    ``read(window, out=None)``, ``labels(window, out=None)``). ``cloud_mask``: a function of a grid window returning a
    boolean (h, w) mask (see :func:`scl_cloud_mask`). Batches with no kept chip are not yielded.
    ``extra_channels``: room left after the bands in each batch's ``arrays`` (uninitialised), so that
    derived features are written straight beside them (:meth:`FeaturePlan.fill`) without copying
    the bands again. ``reuse_buffers``: read every block into one buffer and cut every batch into
    another (``reader.read(window, out=...)``): a batch's ``arrays`` are then valid only until the next
    batch is drawn. A scene's blocks and batches are tens of MB each, past the size where the allocator
    returns memory to the system, so fresh ones are page-faulted anew for every block.
    """
    stride = size if stride is None else int(stride)
    if chips_per_block < 1:
        raise ValueError("chips_per_block must be at least 1")
    grid: TargetGrid = reader.grid
    scene_id: str = reader.scene.id
    n_rows, n_cols = chip_count(grid.height, size, stride), chip_count(grid.width, size, stride)
    k = chips_per_block
    block_flat: np.ndarray | None = None
    batch_buf: np.ndarray | None = None
    labels_buf: np.ndarray | None = None
    label_flat: np.ndarray | None = None
    for bi in range(0, n_rows, k):
        for bj in range(0, n_cols, k):
            ci = range(bi, min(bi + k, n_rows))
            cj = range(bj, min(bj + k, n_cols))
            row0, col0 = ci[0] * stride, cj[0] * stride
            block = Window(col0, row0, (cj[-1] * stride + size) - col0, (ci[-1] * stride + size) - row0)
            if reuse_buffers:
                bh, bw = int(block.height), int(block.width)
                bands = len(reader.bands)
                if block_flat is None:  # room for the largest block, (k - 1) strides and a chip a side
                    side = (k - 1) * stride + size
                    block_flat = np.empty(bands * side * side, dtype=np.float32)
                    label_flat = np.empty(side * side, dtype=np.int32)
                data = reader.read(block, out=block_flat[:bands * bh * bw].reshape(bands, bh, bw))
                assert label_flat is not None
                labels = reader.labels(block, out=label_flat[:bh * bw].reshape(bh, bw))
            else:
                data = reader.read(block)
                labels = reader.labels(block)
            clouds = cloud_mask(block) if cloud_mask is not None else None
            ids: list[str] = []
            rows: list[int] = []
            cols: list[int] = []
            picked: list[tuple[slice, slice]] = []
            chip_labels: list[Any] = []
            for i in ci:
                for j in cj:
                    r, c = i * stride, j * stride
                    sl = (slice(r - row0, r - row0 + size), slice(c - col0, c - col0 + size))
                    chip = data[(slice(None), *sl)]
                    if chip_filter is not None and not chip_filter(chip, clouds[sl] if clouds is not None else None):
                        continue
                    ids.append(chip_id(scene_id, r, c))
                    rows.append(r)
                    cols.append(c)
                    picked.append(sl)
                    if isinstance(labels, np.ndarray):
                        chip_labels.append(labels[sl])
                    else:
                        chip_labels.append(labels)
            if not ids:
                continue
            rows_a = np.asarray(rows, dtype=np.int64)
            cols_a = np.asarray(cols, dtype=np.int64)
            t = grid.transform
            xs = t.c + t.a * (cols_a + size / 2.0)
            ys = t.f + t.e * (rows_a + size / 2.0)
            if isinstance(labels, np.ndarray):
                if reuse_buffers:
                    if labels_buf is None or labels_buf.dtype != labels.dtype:
                        labels_buf = np.empty((k * k, size, size), dtype=labels.dtype)
                    out_labels: Any = np.stack(chip_labels, out=labels_buf[:len(chip_labels)])
                else:
                    out_labels = np.ascontiguousarray(np.stack(chip_labels))
            elif labels is None:
                out_labels = None
            else:
                out_labels = chip_labels
            shape = (len(picked), data.shape[0] + extra_channels, size, size)
            if not reuse_buffers:
                arrays = np.empty(shape, dtype=data.dtype)
            else:
                if batch_buf is None:
                    batch_buf = np.empty((k * k, *shape[1:]), dtype=data.dtype)
                arrays = batch_buf[:len(picked)]
            for k_, sl in enumerate(picked):
                arrays[k_, :data.shape[0]] = data[(slice(None), *sl)]
            yield ChipBatch(scene_id=scene_id, ids=ids, rows=rows_a, cols=cols_a, arrays=arrays, labels=out_labels,
                            centres=np.column_stack([np.asarray(xs, dtype=np.float64),
                                                     np.asarray(ys, dtype=np.float64)]))


# --------------------------------------------------------------------------------------------------
# Splits


def _unit_hash(*parts: Any) -> float:
    """A stable number in [0, 1) from ``parts`` (blake2b; the same in every process and version)."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode("utf-8"), digest_size=8).digest()
    return struct.unpack(">Q", digest)[0] / 2.0**64


def _fractions(fractions: Any) -> tuple[float, float, float]:
    if isinstance(fractions, Mapping):
        f = tuple(float(fractions.get(s, 0.0)) for s in SPLITS)
    elif hasattr(fractions, "train"):
        f = tuple(float(getattr(fractions, s)) for s in SPLITS)
    else:
        f = tuple(float(v) for v in fractions)
    if len(f) != 3 or any(v < 0 or not math.isfinite(v) for v in f) or abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers adding up to 1, got {f}")
    return f  # type: ignore[return-value]


def block_index(centre_xy: Sequence[float], block_size_m: float) -> tuple[int, int]:
    """The (column, row) index of the ``block_size_m`` square holding a point (floor division of the
    grid-CRS coordinates, so blocks are the same for every scene on that CRS)."""
    if not block_size_m > 0:
        raise ValueError(f"block size must be positive, got {block_size_m}")
    return math.floor(float(centre_xy[0]) / block_size_m), math.floor(float(centre_xy[1]) / block_size_m)


def assign_split(method: str, seed: int, fractions: Any, centre_xy: Sequence[float] | None = None,
                 block_size_m: float | None = None, chip_id: str | None = None) -> str:
    """``train`` | ``validation`` | ``test`` for one chip.

    ``fractions``: ``(train, validation, test)``, a mapping with those keys, or the spec's ``split``.
    ``random`` needs ``chip_id``; ``spatial-blocks`` needs ``centre_xy`` (grid CRS) and
    ``block_size_m`` (the spec's ``split.blockSize`` chips x chip size x resolution).
    """
    train, validation, _ = _fractions(fractions)
    if method == "random":
        if chip_id is None:
            raise ValueError("random split needs the chip id")
        u = _unit_hash("random", int(seed), chip_id)
    elif method == "spatial-blocks":
        if centre_xy is None or block_size_m is None:
            raise ValueError("spatial-blocks split needs the chip centre and the block size")
        bx, by = block_index(centre_xy, float(block_size_m))
        u = _unit_hash("block", int(seed), bx, by)
    else:
        raise ValueError(f"unknown split method {method!r}: random or spatial-blocks")
    if u < train:
        return "train"
    if u < train + validation:
        return "validation"
    return "test"


def split_block_size_m(block_size_chips: int, chip_size: int, resolution: float) -> float:
    """The block edge in metres of ``split.blockSize`` chips."""
    return float(block_size_chips) * float(chip_size) * float(resolution)


__all__ = [
    "ChipBatch", "ChipFilter", "S2_SCL_CLOUD_CLASSES", "SPLITS", "assign_split", "block_index", "chip_centre",
    "chip_count", "chip_id", "chip_windows", "cut_chips", "scl_cloud_mask", "split_block_size_m",
]
