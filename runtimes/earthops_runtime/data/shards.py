"""Training shards: the on-store format of a dataset's chips, its writer and its row-group reader.

Layout, under a run folder (written into the run's staging store; the caller publishes it)::

    shards/index.json                          features, dtype, chip shape, label task and classes,
                                               per split: files, chips, row-group sizes, bytes
    shards/<split>/part-<task>-<n>.parquet     ``chipsPerShard`` chips each (the last one fewer)

One Parquet file is a shard. Columns:

* one column per feature (``VV``, ``B04``, ``NDVI`` ...): ``fixed_size_binary(H*W*itemsize)``, the
  chip's pixels row-major, little-endian float32 (float16 when asked), LZ4-compressed (Parquet's
  ``LZ4_RAW``), without dictionary or statistics (min/max of a 16 KiB binary is useless and would
  bloat the footer);
* ``label``: int32 class index (classification), ``fixed_size_binary(n_classes)`` of 0/1 bytes
  (multilabel) or ``fixed_size_binary(H*W)`` uint8 class map, 255 = ignore (segmentation);
  absent for unlabelled data;
* ``chip_id`` (string) and the per-chip metadata (``scene_id`` string, ``row``/``col`` int32,
  ``x``/``y`` float64, any other key as given).

A row group is the unit the loader reads, shuffles and spreads over workers and ranks: 256 chips, or
fewer so that it decodes to at most 24 MiB (109 chips of 14x64x64; see :data:`ROW_GROUP_BYTES`).
One feature's column chunk in it is then about 1 MiB at 64x64, one ranged GET.

Why this format: measured by ``tests/bench/test_bench_shards.py`` (``make bench``), which writes the
same chips in each format and reads them back as per-chip tensors. A run on the 2-core development
machine, 1024 chips of 14 features x 64x64 float32 (235 MB decoded; EO-like synthetic chips that
compress like the real BigEarthNet patches, which the benchmark also prints), 512 chips per shard,
best of 3 rounds, chips/s (x 0.229 = MB/s decoded); reads single-threaded, no prefetch::

                        pq/lz4*  pq/zstd1  pq/raw  pq/f16  pq/one-col  tar/npy
    stored MB               164       138     235      97         172      237
    local  write           1699      1662    6706    2894        1359     2327
           read            7907      3573   12576    6051        9553     2786
           read 2 of 14   40121     21592   45623   32942        8769     2649
           read 13 of 14   7523      3683   12007    6108        7388     2500
           shuffled        6844      3346   11165    5728        8213     2298
    S3     write            488       458     293     858         383      411
           read            2451      1800    2606    2325        1876      833
           read 2 of 14    4178      4398    5705    5097        2083      841
           read 13 of 14   2227      1632    2530    2512        1877      827
           shuffled        2174      1726    2361    2490        1424      812

* One column per feature against one column holding every channel (``pq/one-col``): reading 2 of
  14 features is 4.6x faster locally and 2.0x from S3 (only those column chunks are fetched and
  decoded: 2/14 of the bytes); leaving one feature out is even (1.02x local, 1.19x S3). The price:
  a full local read is 0.83x as fast (the per-feature columns are copied into one (N, C, H, W)
  array, where one-col's buffer already is one). Ablations and feature subsets are what earthops
  runs many of, so per-feature columns win.
* Against WebDataset-style tars of ``.npy`` per chip: 2.8x faster full reads locally and 2.9x from
  S3, 15x and 5x for 2 of 14 features, 3.0x and 2.7x shuffled, in 0.69x the bytes. A tar can only
  be read front to back: no subset, no row group to shuffle or to split among workers.
* Feature columns are stored uncompressed (``pq/raw``): against LZ4 they read 1.6x faster locally
  and 1.06x from S3 and write 3.9x faster locally, for 1.43x the bytes (LZ4 takes 0.70x of them,
  zstd-1 0.59x). LZ4 was the choice until preparation speed was measured against the raw read limit
  (``tests/bench/test_bench_prepare.py``): LZ4 wrote float32 reflectance at 110 MB/s on the loaded
  machine (670 MB/s uncompressed, the same moment), which cost a preparation worker as much time as
  reading its scene (writes with LZ4 ~35 % of a worker's time in one profile, 14-17 % uncompressed). Labels, ids and metadata stay LZ4 (small; class maps compress well).
  ``compression="lz4"`` or ``"zstd"`` (with ``compression_level``) are there for network-bound or
  storage-bound setups; readers need not know (Parquet names the codec per column chunk).
* float32 round-trips exactly. float16 takes 0.59x the bytes of float32 but rounds to about 3
  significant digits and decodes slower (the conversion): an option (``dtype="float16"``).

Writing: one :class:`ShardWriter` per Ray task (part names carry the task id, so writers never
collide), each returning a :class:`ShardSummary` from :meth:`ShardWriter.close`; then one
:func:`write_index` merges the summaries into ``shards/index.json``. Reading: :func:`read_index`,
:class:`ShardReader` (one row group, chosen columns; local files natively, S3 through concurrent
ranged GETs of just the column chunks needed), :func:`read_split` (everything, for evaluation).
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from earthops.core.store import Store, StoreError
from earthops_runtime.data.rows import chip_rows

FORMAT = "earthops.shards"
VERSION = 1
SHARDS_DIR = "shards"
INDEX_NAME = "index.json"
INDEX_KEY = f"{SHARDS_DIR}/{INDEX_NAME}"
ID_COLUMN = "chip_id"
LABEL_COLUMN = "label"
IGNORE_INDEX = 255
LABEL_TASKS = ("classification", "multilabel", "segmentation")
DTYPES = ("float32", "float16")
ROW_GROUP_CHIPS = 256
#: The codec of feature columns (see the module docstring for why).
COMPRESSION = "none"
COMPRESSION_LEVEL: int | None = None
#: The codec of the other columns (labels, chip ids, metadata): small, and class maps compress well.
OTHER_COMPRESSION = "lz4"
#: Largest decoded (float32) row group. Above 32 MiB glibc's malloc serves every allocation with
#: fresh mmap'd pages, page-faulted anew for each row group: 2.6x slower full reads measured at 256
#: chips of 14x64x64 (58 MiB) than at 109 (24 MiB), where freed buffers are reused.
ROW_GROUP_BYTES = 24 << 20
#: Types of the well-known per-chip metadata; other keys keep the type pyarrow infers.
KNOWN_META: dict[str, pa.DataType] = {
    "scene_id": pa.string(), "row": pa.int32(), "col": pa.int32(), "x": pa.float64(), "y": pa.float64(),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FILE_META_KEY = b"earthops.shards"
_COALESCE_GAP = 8 << 10  # ranges closer than this are fetched in one GET (as Arrow does)


# --- the description of shards ------------------------------------------------------------------


@dataclass(frozen=True)
class ShardFile:
    """One shard file. ``path`` is relative to the ``shards/`` folder (``train/part-t1-00000.parquet``)."""

    split: str
    path: str
    chips: int
    bytes: int
    row_groups: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "path": self.path, "chips": self.chips, "bytes": self.bytes,
                "row_groups": list(self.row_groups)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardFile:
        return cls(str(d["split"]), str(d["path"]), int(d["chips"]), int(d["bytes"]),
                   tuple(int(n) for n in d["row_groups"]))


@dataclass(frozen=True)
class ShardSummary:
    """What one writer wrote (also the content of the merged index: see :class:`ShardIndex`)."""

    features: tuple[str, ...]
    dtype: str
    chip_shape: tuple[int, int]
    label_task: str | None
    classes: tuple[str, ...]
    #: Width of the multilabel vector (number of classes); None for the other tasks.
    label_width: int | None
    #: Per-chip metadata columns: name -> Arrow type (as text).
    meta: dict[str, str]
    files: tuple[ShardFile, ...] = ()

    @property
    def counts(self) -> dict[str, int]:
        """Chips per split."""
        out: dict[str, int] = {}
        for f in self.files:
            out[f.split] = out.get(f.split, 0) + f.chips
        return dict(sorted(out.items()))

    @property
    def splits(self) -> list[str]:
        return list(self.counts)

    def files_of(self, split: str) -> list[ShardFile]:
        return [f for f in self.files if f.split == split]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION,
            "features": list(self.features), "dtype": self.dtype, "chip_shape": list(self.chip_shape),
            "label": None if self.label_task is None else {
                "task": self.label_task, "classes": list(self.classes), "width": self.label_width,
                "column": LABEL_COLUMN, "ignore_index": IGNORE_INDEX if self.label_task == "segmentation" else None,
            },
            "id_column": ID_COLUMN, "meta": dict(self.meta),
            "counts": self.counts,
            "splits": {s: {"chips": n, "files": [f.to_dict() for f in self.files_of(s)]}
                       for s, n in self.counts.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardSummary:
        if d.get("format") != FORMAT or int(d.get("version", 0)) > VERSION:
            raise ValueError(f"not an {FORMAT} v{VERSION} description (format={d.get('format')!r}, "
                             f"version={d.get('version')!r})")
        label = d.get("label")
        files = [ShardFile.from_dict(f) for s in d.get("splits", {}).values() for f in s["files"]]
        return cls(
            features=tuple(d["features"]), dtype=str(d["dtype"]), chip_shape=_shape(d["chip_shape"]),
            label_task=None if label is None else str(label["task"]),
            classes=() if label is None else tuple(label.get("classes", ())),
            label_width=None if label is None or label.get("width") is None else int(label["width"]),
            meta=dict(d.get("meta", {})), files=tuple(sorted(files, key=lambda f: (f.split, f.path))),
        )


#: The merged description of a dataset's shards, as read from ``shards/index.json``.
ShardIndex = ShardSummary


def _shape(chip_shape: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(chip_shape, int | np.integer):
        chip_shape = (int(chip_shape), int(chip_shape))
    shape = tuple(int(v) for v in chip_shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"chip_shape {chip_shape!r}: expected (height, width) of positive integers")
    return shape  # type: ignore[return-value]


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} {name!r}: use letters, digits, '_', '.', '-' (starting with a letter or digit)")
    return name


def _fs_path(store: Store, key: str) -> str:
    """The path of ``key`` for ``store.fs`` (and for pyarrow, locally)."""
    return str(store.local_path(key)) if store.is_local else store.url(key)


def write_out(path: str) -> None:
    """Put a local file's written bytes on disk and out of the page cache: a shard is written once and
    read by training later, so its pages would only crowd the cache — where a pod's memory limit counts
    them — and, on virtual machines that hand freed memory back to the host, every new page costs a
    fault at the host (a preparation run writes 2.5x the pixels it reads; writing 2.3 GB took 8.7-11 s
    of CPU that way and 2.0-2.8 s with this, measured on the 2-core CI machine). Also makes the shards
    durable before the run is published by a rename."""
    fd = os.open(path, os.O_RDONLY)
    try:
        getattr(os, "fdatasync", os.fsync)(fd)  # macOS has only fsync
        if hasattr(os, "posix_fadvise"):  # Linux; elsewhere the cache keeps the pages
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def default_rows_per_group(chip_bytes: int) -> int:
    """Chips per row group: 256, fewer where the decoded row group (``chip_bytes`` per chip, all
    features as float32) would pass :data:`ROW_GROUP_BYTES`."""
    return max(1, min(ROW_GROUP_CHIPS, ROW_GROUP_BYTES // max(1, chip_bytes)))


# --- writing ------------------------------------------------------------------------------------


@dataclass
class _OpenFile:
    key: str
    writer: pq.ParquetWriter
    handle: Any = None  # the fsspec file on object stores (pyarrow writes local paths natively)
    chips: int = 0
    row_groups: list[int] = field(default_factory=list)


@dataclass
class _SplitState:
    """A split's next row group, staged: the chips are copied once, straight from the caller's batch
    into per-feature buffers of one row group that the Parquet writer reads without another copy, and
    the buffers are reused for every row group of the split."""

    features: list[np.ndarray] | None = None  # per feature (rows_per_group, H, W), the shard dtype
    labels: np.ndarray | None = None  # (rows_per_group, ...) as stored
    ids: list[str] = field(default_factory=list)
    meta: dict[str, list[np.ndarray]] = field(default_factory=dict)
    staged: int = 0
    file: _OpenFile | None = None
    next_part: int = 0


class ShardWriter:
    """Writes chips into Parquet shards under ``shards/<split>/`` of ``run_store`` (a staging store).

    ``with ShardWriter(run, features, (64, 64), "classification", classes, 2048, task_id=tid) as w:
    w.write("train", x, y, ids, meta)`` — then ``summary = w.summary`` (or ``w.close()`` without
    ``with``). At most one row group per split is held in memory; files stream to the store.
    """

    def __init__(
        self,
        run_store: Store,
        features: Sequence[str],
        chip_shape: int | Sequence[int],
        label_task: str | None,
        classes: Sequence[str] = (),
        chips_per_shard: int = 2048,
        *,
        task_id: str | None = None,
        dtype: str = "float32",
        rows_per_group: int | None = None,
        compression: str = COMPRESSION,
        compression_level: int | None = COMPRESSION_LEVEL,
    ):
        self.store = run_store
        self.features = tuple(_check_name("feature", f) for f in features)
        if not self.features:
            raise ValueError("features: at least one feature is needed")
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"features {list(self.features)}: names must be unique")
        self.chip_shape = _shape(chip_shape)
        if label_task is not None and label_task not in LABEL_TASKS:
            raise ValueError(f"label_task {label_task!r}: expected one of {', '.join(LABEL_TASKS)} or None")
        self.label_task = label_task
        self.classes = tuple(str(c) for c in classes)
        if int(chips_per_shard) < 1:
            raise ValueError(f"chips_per_shard {chips_per_shard!r}: must be at least 1")
        self.chips_per_shard = int(chips_per_shard)
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        self.dtype = dtype
        self._np_dtype = np.dtype(dtype).newbyteorder("<")
        self.task_id = _check_name("task_id", task_id) if task_id is not None else uuid.uuid4().hex[:12]
        h, w = self.chip_shape
        self._feature_bytes = h * w * self._np_dtype.itemsize
        self.rows_per_group = int(rows_per_group) if rows_per_group is not None else default_rows_per_group(
            4 * h * w * len(self.features))
        if self.rows_per_group < 1:
            raise ValueError(f"rows_per_group {rows_per_group!r}: must be at least 1")
        self._compression = compression
        self._compression_level = compression_level
        self._label_width: int | None = len(self.classes) if label_task == "multilabel" and self.classes else None
        reserved = {ID_COLUMN, LABEL_COLUMN}
        clash = reserved & set(self.features)
        if clash:
            raise ValueError(f"features {sorted(clash)}: these names are reserved for shard columns")
        self._schema: pa.Schema | None = None  # fixed by the first write (meta columns, label width)
        self._meta_types: dict[str, pa.DataType] | None = None
        self._splits: dict[str, _SplitState] = {}
        self._files: list[ShardFile] = []
        self._summary: ShardSummary | None = None
        self._lock = threading.Lock()
        # local files are written out (write_out) by a thread behind the writer: the worker goes on
        # cutting chips while the disk takes the last row group; at most one waits
        self._write_out_pool: ThreadPoolExecutor | None = None
        self._writing_out: tuple[str, Future[None]] | None = None

    # -- public --

    def write(
        self,
        split: str,
        arrays: np.ndarray,
        labels: np.ndarray | Sequence[Any] | None,
        ids: Sequence[str],
        meta: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
        *,
        rows: np.ndarray | Sequence[int] | None = None,
    ) -> None:
        """Append chips ``arrays`` (N, C, H, W) of ``split`` with their labels, ids and metadata.

        ``rows``: write only these chips of ``arrays`` (indices, in order), without the caller
        gathering them first; ``labels``, ``ids`` and ``meta`` are then those chips' own. The chips
        are copied before this returns: the caller may reuse ``arrays``."""
        if self._summary is not None:
            raise RuntimeError("ShardWriter.write after close()")
        _check_name("split", split)
        x = np.asarray(arrays)
        c, (h, w) = len(self.features), self.chip_shape
        if x.ndim != 4 or x.shape[1:] != (c, h, w):
            raise ValueError(f"arrays shape {x.shape}: expected (N, {c}, {h}, {w}) "
                             f"(chips, features {list(self.features)}, height, width)")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"arrays dtype {x.dtype}: expected a numeric (float32) array")
        if rows is not None:
            rows = chip_rows(rows, len(x))
        n = len(x) if rows is None else len(rows)
        ids_list = [str(i) for i in ids] if ids is not None else None
        if ids_list is None or len(ids_list) != n:
            raise ValueError(f"ids: expected {n} chip ids, got {None if ids is None else len(ids_list)}")
        if n == 0:  # nothing to write, and nothing to learn the label width or meta types from
            return
        y = self._check_labels(labels, n)
        columns = self._check_meta(meta, n)
        with self._lock:
            state = self._splits.setdefault(split, _SplitState())
            done = 0
            while done < n:
                if state.features is None:
                    state.features = [np.empty((self.rows_per_group, h, w), self._np_dtype) for _ in self.features]
                    if y is not None:
                        state.labels = np.empty((self.rows_per_group, *y.shape[1:]), y.dtype)
                k = min(n - done, self._group_size(state) - state.staged)
                at = slice(state.staged, state.staged + k)
                pick = slice(done, done + k) if rows is None else rows[done:done + k]
                for i, dst in enumerate(state.features):
                    if rows is None:
                        dst[at] = x[pick, i]
                    else:  # chip by chip: numpy's gathers would copy all of x[:, i] (strided) first
                        for j, r in enumerate(pick.tolist(), start=state.staged):
                            dst[j] = x[r, i]
                if y is not None:
                    assert state.labels is not None
                    state.labels[at] = y[done:done + k]
                state.ids += ids_list[done:done + k]
                for name, values in columns.items():  # copied: the caller may reuse its arrays
                    state.meta.setdefault(name, []).append(np.array(values[done:done + k]))
                state.staged += k
                done += k
                if state.staged == self._group_size(state):
                    self._flush(split, state)

    def close(self) -> ShardSummary:
        """Flush and close every shard; the summary of what this writer wrote (idempotent)."""
        with self._lock:
            if self._summary is None:
                for split, state in self._splits.items():
                    if state.staged:
                        self._flush(split, state)
                    self._close_file(split, state)
                    state.features = state.labels = None
                self._stop_writing_out()
                self._summary = ShardSummary(
                    features=self.features, dtype=self.dtype, chip_shape=self.chip_shape,
                    label_task=self.label_task, classes=self.classes, label_width=self._label_width,
                    meta={k: str(t) for k, t in (self._meta_types or {}).items()},
                    files=tuple(sorted(self._files, key=lambda f: (f.split, f.path))),
                )
            return self._summary

    @property
    def summary(self) -> ShardSummary:
        if self._summary is None:
            raise RuntimeError("the writer is still open: call close() first")
        return self._summary

    def abort(self) -> None:
        """Close open files without flushing pending chips (the staging folder is discarded anyway)."""
        with self._lock:
            for state in self._splits.values():
                state.features = state.labels = None
                state.ids, state.meta, state.staged = [], {}, 0
                if state.file is not None:
                    try:
                        state.file.writer.close()
                        if state.file.handle is not None:
                            state.file.handle.close()
                    except Exception:  # noqa: BLE001 - best effort on the way out of a failure
                        pass
                    state.file = None
            try:
                self._stop_writing_out()
            except Exception:  # noqa: BLE001 - the failure being handled is the one to report
                pass

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- checks --

    def _check_labels(self, labels: Any, n: int) -> np.ndarray | None:
        task, k = self.label_task, len(self.classes)
        if task is None:
            if labels is not None:
                raise ValueError("labels: this writer has no label task (label_task=None); pass labels=None")
            return None
        if labels is None:
            raise ValueError(f"labels: required for label task {task!r}")
        y = np.asarray(labels)
        if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
            raise ValueError(f"labels dtype {y.dtype}: {task} labels must be integers")
        if task == "classification":
            if y.shape != (n,):
                raise ValueError(f"labels shape {y.shape}: classification expects ({n},) class indices")
            hi = k if k else np.iinfo(np.int32).max
            if n and (y.min() < 0 or y.max() >= hi):
                raise ValueError(f"labels: class index out of range [0, {hi}) "
                                 f"(found {int(y.min())}..{int(y.max())}; classes {list(self.classes)})")
            return y.astype(np.int32)
        if task == "multilabel":
            width = self._label_width if self._label_width is not None else (y.shape[1] if y.ndim == 2 else None)
            if y.ndim != 2 or y.shape != (n, width):
                raise ValueError(f"labels shape {y.shape}: multilabel expects ({n}, {width or 'n_classes'}) 0/1 vectors")
            if n and not np.isin(y, (0, 1)).all():
                raise ValueError("labels: multilabel vectors must hold only 0 and 1")
            self._label_width = width
            return np.ascontiguousarray(y, dtype=np.uint8)
        # segmentation
        h, w = self.chip_shape
        if y.shape != (n, h, w):
            raise ValueError(f"labels shape {y.shape}: segmentation expects ({n}, {h}, {w}) class maps")
        if n:
            lo, hi = int(y.min()), int(y.max())
            bad = lo < 0 or hi > IGNORE_INDEX or (
                k and not np.all((y < k) | (y == IGNORE_INDEX)))
            if bad:
                raise ValueError(f"labels: segmentation classes must be in [0, {k or 255}) or {IGNORE_INDEX} (ignore); "
                                 f"found {lo}..{hi}")
        return np.ascontiguousarray(y, dtype=np.uint8)

    def _check_meta(self, meta: Mapping[str, Any] | None, n: int) -> dict[str, np.ndarray]:
        meta = dict(meta or {})
        for name, values in meta.items():
            _check_name("meta column", name)
            if name in self.features or name in (ID_COLUMN, LABEL_COLUMN):
                raise ValueError(f"meta column {name!r}: the name is taken by a feature or a shard column")
            if len(values) != n:
                raise ValueError(f"meta {name!r}: expected {n} values, got {len(values)}")
        if self._meta_types is None:
            with self._lock:
                if self._meta_types is None:
                    self._meta_types = {
                        name: KNOWN_META.get(name) or pa.array(np.asarray(values)[:1].tolist()).type
                        for name, values in meta.items()
                    }
        if set(meta) != set(self._meta_types):
            raise ValueError(f"meta columns {sorted(meta)}: every write of a writer must give the same columns "
                             f"({sorted(self._meta_types)})")
        return {name: np.asarray(values) for name, values in meta.items()}

    # -- files --

    def _group_size(self, state: _SplitState) -> int:
        """Chips of the row group being staged: :attr:`rows_per_group`, fewer where the shard ends."""
        room = self.chips_per_shard - (state.file.chips if state.file else 0)
        return min(self.rows_per_group, room)

    def _flush(self, split: str, state: _SplitState) -> None:
        """Write the staged chips as one row group (opening a shard first if none is open)."""
        if state.file is None:
            state.file = self._open_file(split, state)
        table = self._table(state)
        # the row group leaves the staging whatever follows: a failed write is the run's, never a
        # second copy of the same chips at close
        state.ids, state.meta, state.staged = [], {}, 0
        with self.store.errors("write", state.file.key):
            state.file.writer.write_table(table, row_group_size=table.num_rows)
        state.file.chips += table.num_rows
        state.file.row_groups.append(table.num_rows)
        if state.file.handle is None:
            self._write_out_later(state.file.key)  # may raise the previous row group's failure
        if state.file.chips >= self.chips_per_shard:
            self._close_file(split, state)

    def _write_out_later(self, key: str) -> None:
        self._written_out()
        if self._write_out_pool is None:
            self._write_out_pool = ThreadPoolExecutor(1, thread_name_prefix="shard-write-out")
        self._writing_out = (key, self._write_out_pool.submit(write_out, _fs_path(self.store, key)))

    def _written_out(self) -> None:
        """Wait for the file being written out; its failure is this write's (as the store's error)."""
        if self._writing_out is not None:
            key, future = self._writing_out
            self._writing_out = None
            with self.store.errors("write", key):
                future.result()

    def _stop_writing_out(self) -> None:
        try:
            self._written_out()
        finally:
            if self._write_out_pool is not None:
                self._write_out_pool.shutdown()
                self._write_out_pool = None

    def _ensure_schema(self) -> pa.Schema:
        if self._schema is None:
            fields = [pa.field(f, pa.binary(self._feature_bytes), nullable=False) for f in self.features]
            h, w = self.chip_shape
            if self.label_task == "classification":
                fields.append(pa.field(LABEL_COLUMN, pa.int32(), nullable=False))
            elif self.label_task == "multilabel":
                fields.append(pa.field(LABEL_COLUMN, pa.binary(self._label_width or 0), nullable=False))
            elif self.label_task == "segmentation":
                fields.append(pa.field(LABEL_COLUMN, pa.binary(h * w), nullable=False))
            fields.append(pa.field(ID_COLUMN, pa.string(), nullable=False))
            fields += [pa.field(k, t) for k, t in (self._meta_types or {}).items()]
            description = {"format": FORMAT, "version": VERSION, "features": list(self.features),
                           "dtype": self.dtype, "chip_shape": list(self.chip_shape), "label_task": self.label_task,
                           "classes": list(self.classes), "label_width": self._label_width}
            self._schema = pa.schema(fields, metadata={_FILE_META_KEY: json.dumps(description).encode()})
        return self._schema

    def _table(self, state: _SplitState) -> pa.Table:
        """The staged row group as a table over the staging buffers (no copy: the Parquet writer has
        encoded it before the buffers are written again)."""
        schema = self._ensure_schema()
        n = state.staged
        assert state.features is not None
        columns: list[pa.Array] = [
            pa.FixedSizeBinaryArray.from_buffers(pa.binary(self._feature_bytes), n, [None, pa.py_buffer(f[:n])])
            for f in state.features]
        if self.label_task == "classification":
            columns.append(pa.array(state.labels[:n], type=pa.int32()))
        elif self.label_task is not None:
            assert state.labels is not None
            y = state.labels[:n]
            columns.append(pa.FixedSizeBinaryArray.from_buffers(pa.binary(y[0].nbytes), n, [None, pa.py_buffer(y)]))
        columns.append(pa.array(state.ids, type=pa.string()))
        for name, typ in (self._meta_types or {}).items():
            columns.append(pa.array(np.concatenate(state.meta[name]).tolist(), type=typ))
        return pa.Table.from_arrays(columns, schema=schema)

    def _open_file(self, split: str, state: _SplitState) -> _OpenFile:
        schema = self._ensure_schema()
        key = f"{SHARDS_DIR}/{split}/part-{self.task_id}-{state.next_part:05d}.parquet"
        state.next_part += 1
        scalar = [f.name for f in schema if f.name not in self.features and not pa.types.is_fixed_size_binary(f.type)]
        options = dict(
            compression={f.name: self._compression if f.name in self.features else OTHER_COMPRESSION
                         for f in schema},
            compression_level=None if self._compression_level is None else {
                f: self._compression_level for f in self.features},
            use_dictionary=[n for n in scalar if n not in (ID_COLUMN,)],
            write_statistics=scalar, store_schema=True,
        )
        path = _fs_path(self.store, key)
        with self.store.errors("write", key):
            if self.store.is_local:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                return _OpenFile(key, pq.ParquetWriter(path, schema, **options))
            handle = self.store.fs.open(path, "wb")
            return _OpenFile(key, pq.ParquetWriter(handle, schema, **options), handle)

    def _close_file(self, split: str, state: _SplitState) -> None:
        f = state.file
        if f is None:
            return
        state.file = None
        with self.store.errors("write", f.key):
            f.writer.close()
            if f.handle is not None:
                size = f.handle.tell()
                f.handle.close()
            else:
                self._written_out()
                path = _fs_path(self.store, f.key)
                write_out(path)
                size = os.path.getsize(path)
        self._files.append(ShardFile(split, f.key.removeprefix(f"{SHARDS_DIR}/"), f.chips, size, tuple(f.row_groups)))


def merge_summaries(summaries: Iterable[ShardSummary | Mapping[str, Any]]) -> ShardIndex:
    """One description of the shards of several writers; they must agree on everything but files
    (writers that wrote nothing only need to agree on features, dtype, chip shape and labels)."""
    items = [s if isinstance(s, ShardSummary) else ShardSummary.from_dict(s) for s in summaries]
    if not items:
        raise ValueError("write_index: no writer summaries given")
    first = items[0]
    for s in items:
        for name in ("features", "dtype", "chip_shape", "label_task", "classes"):
            if getattr(s, name) != getattr(first, name):
                raise ValueError(f"write_index: writers disagree on {name}: "
                                 f"{getattr(first, name)!r} vs {getattr(s, name)!r}")
    wrote = [s for s in items if s.files] or [first]
    for s in wrote:
        for name in ("meta", "label_width"):
            if getattr(s, name) != getattr(wrote[0], name):
                raise ValueError(f"write_index: writers disagree on {name}: "
                                 f"{getattr(wrote[0], name)!r} vs {getattr(s, name)!r}")
    files = [f for s in items for f in s.files]
    paths = [(f.split, f.path) for f in files]
    if len(set(paths)) != len(paths):
        raise ValueError("write_index: two writers wrote the same file (give each writer its own task_id)")
    return ShardSummary(first.features, first.dtype, first.chip_shape, first.label_task, first.classes,
                        wrote[0].label_width, dict(wrote[0].meta),
                        tuple(sorted(files, key=lambda f: (f.split, f.path))))


def write_index(run_store: Store, summaries: Iterable[ShardSummary | Mapping[str, Any]]) -> ShardIndex:
    """Merge the writers' summaries into ``shards/index.json`` of ``run_store``; the merged index."""
    index = merge_summaries(summaries)
    run_store.write_json(INDEX_KEY, index.to_dict())
    return index


# --- reading ------------------------------------------------------------------------------------


def find_index(store: Store, key: str = "") -> str:
    """The key of the shard index for a run folder ``key`` (or its ``shards/`` folder, or the index)."""
    key = key.strip("/")
    if key.endswith(f"/{INDEX_NAME}") or key == INDEX_NAME:
        candidates = [key]
    else:
        base = f"{key}/" if key else ""
        candidates = [f"{base}{INDEX_KEY}", f"{base}{INDEX_NAME}"]
    for candidate in candidates:
        if store.exists(candidate):
            return candidate
    raise StoreError(f"no shard index at {' or '.join(store.url(c) for c in candidates)} "
                     "(is this a published EODataset run?)")


def open_source(source: str | Store, key: str = "", env: Mapping[str, str] | None = None) -> tuple[Store, str]:
    """The store and the key of a dataset source: a Store and a key, or a URI (of the run folder, its
    ``shards/`` folder or its ``index.json``). A local folder that does not exist is an error, not
    created (``Store.from_uri`` would create it)."""
    if isinstance(source, Store):
        return source, key
    uri = str(source).rstrip("/")
    if uri.endswith(".json"):  # the index itself: the store is its folder
        uri, _, name = uri.rpartition("/")
        key = f"{key.strip('/')}/{name}" if key.strip("/") else name
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else uri).expanduser()
        if not path.is_dir():
            raise StoreError(f"no shard index at {uri}: no such folder")
    return Store.from_uri(uri, env=dict(env) if env else None), key


def read_index(store: Store, key: str = "") -> tuple[ShardIndex, str]:
    """The shard index of a run and the key of its ``shards/`` folder."""
    index_key = find_index(store, key)
    try:
        index = ShardSummary.from_dict(store.read_json(index_key))
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"read {store.url(index_key)}: not a shard index: {exc}") from exc
    return index, index_key.rpartition("/")[0]


@dataclass
class ChipBatch:
    """Decoded chips: ``x`` float32 (N, C, H, W) in the requested feature order; labels as stored
    (classification int64 (N,), multilabel uint8 (N, K), segmentation uint8 (N, H, W)) or None."""

    x: np.ndarray
    labels: np.ndarray | None = None
    ids: list[str] | None = None
    meta: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.x)

    def slice(self, start: int, stop: int) -> ChipBatch:
        if start == 0 and stop == len(self.x):
            return self
        return ChipBatch(
            self.x[start:stop], None if self.labels is None else self.labels[start:stop],
            None if self.ids is None else self.ids[start:stop],
            None if self.meta is None else {k: v[start:stop] for k, v in self.meta.items()},
        )


class ShardReader:
    """Reads row groups of shard files through a :class:`Store`.

    Local stores: pyarrow reads the file natively. Object stores: the footer once per file (one
    ranged GET of the tail; size from the index, so no HEAD), then per row group one concurrent batch
    of ranged GETs (``fs.cat_ranges``) for exactly the column chunks wanted, adjacent ones merged.
    Thread-safe; not fork-safe (open one per process: the loader does)."""

    def __init__(self, store: Store, shards_key: str, index: ShardIndex):
        self.store = store
        self.shards_key = shards_key.strip("/")
        self.index = index
        self._meta: dict[str, pq.FileMetaData] = {}
        self._lock = threading.Lock()
        self._np_dtype = np.dtype(index.dtype).newbyteorder("<")

    def key(self, f: ShardFile) -> str:
        return f"{self.shards_key}/{f.path}" if self.shards_key else f.path

    def metadata(self, f: ShardFile) -> pq.FileMetaData:
        with self._lock:
            found = self._meta.get(f.path)
        if found is not None:
            return found
        key = self.key(f)
        path = _fs_path(self.store, key)
        try:
            if self.store.is_local:
                meta = pq.read_metadata(path)
            else:
                meta = pq.read_metadata(pa.BufferReader(self._tail(path, f.bytes)))
        except FileNotFoundError as exc:
            raise StoreError(f"read {self.store.url(key)}: not found (the index names a missing shard)") from exc
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"read {self.store.url(key)}: {type(exc).__name__}: {exc}") from exc
        with self._lock:
            self._meta[f.path] = meta
        return meta

    def _tail(self, path: str, size: int) -> bytes:
        tail = self.store.fs.cat_file(path, start=max(0, size - (1 << 16)), end=size)
        if len(tail) < 8 or tail[-4:] != b"PAR1":
            raise ValueError("not a Parquet file (no PAR1 footer)")
        need = int.from_bytes(tail[-8:-4], "little") + 8
        if need > len(tail):
            tail = self.store.fs.cat_file(path, start=size - need, end=size)
        return tail

    def read_table(self, f: ShardFile, row_group: int, columns: Sequence[str], *, use_threads: bool = True) -> pa.Table:
        """Columns ``columns`` of one row group of ``f``."""
        meta = self.metadata(f)
        key = self.key(f)
        path = _fs_path(self.store, key)
        try:
            if self.store.is_local:
                return pq.ParquetFile(path, metadata=meta).read_row_group(row_group, columns=list(columns),
                                                                          use_threads=use_threads)
            return read_row_group_ranged(self.store.fs, path, f.bytes, meta, row_group, columns,
                                         use_threads=use_threads)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"read {self.store.url(key)} (row group {row_group}): {type(exc).__name__}: {exc}") from exc

    def read(self, f: ShardFile, row_group: int, features: Sequence[str], *, labels: bool = True,
             ids: bool = False, meta: bool = False, use_threads: bool = True) -> ChipBatch:
        """One row group decoded: the chips of ``features`` (in that order) and what else is asked."""
        labels = labels and self.index.label_task is not None
        columns = list(dict.fromkeys(features))
        if labels:
            columns.append(LABEL_COLUMN)
        if ids:
            columns.append(ID_COLUMN)
        if meta:
            columns += list(self.index.meta)
        table = self.read_table(f, row_group, columns, use_threads=use_threads)
        return decode(table, self.index, features, labels=labels, ids=ids, meta=meta)


def read_row_group_ranged(fs: Any, path: str, size: int, meta: pq.FileMetaData, row_group: int,
                          columns: Sequence[str], *, use_threads: bool = True) -> pa.Table:
    """Read one row group's ``columns`` with one concurrent batch of ranged reads of their chunks.

    The chunks are placed at their offsets in a zero-filled buffer the size of the file (``calloc``:
    pages never written cost no memory) that pyarrow then reads as the file, with the footer given."""
    rg = meta.row_group(row_group)
    by_name = {rg.column(i).path_in_schema: i for i in range(rg.num_columns)}
    ranges = []
    for name in columns:
        if name not in by_name:
            raise KeyError(f"column {name!r} not in the shard (has {sorted(by_name)})")
        cc = rg.column(by_name[name])
        start = cc.data_page_offset
        if cc.has_dictionary_page and cc.dictionary_page_offset:
            start = min(start, cc.dictionary_page_offset)
        ranges.append((start, start + cc.total_compressed_size))
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start - merged[-1][1] <= _COALESCE_GAP:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    blobs = fs.cat_ranges([path] * len(merged), [s for s, _ in merged], [e for _, e in merged])
    buf = np.zeros(size, dtype=np.uint8)
    for (start, end), blob in zip(merged, blobs, strict=True):
        if isinstance(blob, BaseException):
            raise blob
        if len(blob) != end - start:
            raise OSError(f"short read of bytes {start}-{end}: got {len(blob)} (the file changed?)")
        buf[start:end] = np.frombuffer(blob, dtype=np.uint8)
    reader = pq.ParquetFile(pa.BufferReader(pa.py_buffer(buf)), metadata=meta)
    return reader.read_row_group(row_group, columns=list(columns), use_threads=use_threads)


def _binary_values(column: pa.ChunkedArray | pa.Array, dtype: np.dtype, per_row: int) -> np.ndarray:
    """The values of a fixed_size_binary column as one flat numpy array (no copy for one chunk)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) and column.num_chunks != 1 else (
        column.chunk(0) if isinstance(column, pa.ChunkedArray) else column)
    n = len(arr)
    if arr.null_count:
        raise ValueError("a chip column holds nulls")
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=n * per_row, offset=arr.offset * per_row * dtype.itemsize)


def decode(table: pa.Table, index: ShardIndex, features: Sequence[str], *, labels: bool = True,
           ids: bool = False, meta: bool = False) -> ChipBatch:
    """A :class:`ChipBatch` from a table of shard columns."""
    n = table.num_rows
    h, w = index.chip_shape
    dtype = np.dtype(index.dtype).newbyteorder("<")
    x = np.empty((n, len(features), h, w), dtype=np.float32)
    for j, name in enumerate(features):
        x[:, j] = _binary_values(table.column(name), dtype, h * w).reshape(n, h, w)
    y = None
    if labels and index.label_task is not None:
        col = table.column(LABEL_COLUMN)
        if index.label_task == "classification":
            y = col.to_numpy().astype(np.int64)
        elif index.label_task == "multilabel":
            width = index.label_width or 0
            y = _binary_values(col, np.dtype(np.uint8), width).reshape(n, width).copy()
        else:
            y = _binary_values(col, np.dtype(np.uint8), h * w).reshape(n, h, w).copy()
    id_list = table.column(ID_COLUMN).to_pylist() if ids else None
    meta_cols = {k: table.column(k).to_numpy(zero_copy_only=False) for k in index.meta} if meta else None
    return ChipBatch(x, y, id_list, meta_cols)


def read_split(source: Store | str, split: str, features: Sequence[str] | None = None, *, key: str = "",
               env: Mapping[str, str] | None = None) -> ChipBatch:
    """Every chip of ``split`` in shard order, with labels, ids and metadata (evaluation, checks)."""
    store, key = open_source(source, key, env)
    index, shards_key = read_index(store, key)
    check_split(index, split)
    names = check_features(index, features)
    reader = ShardReader(store, shards_key, index)
    parts = [reader.read(f, rg, names, ids=True, meta=True)
             for f in index.files_of(split) for rg in range(len(f.row_groups))]
    h, w = index.chip_shape
    if not parts:
        empty_y = None if index.label_task is None else np.empty(
            {"classification": (0,), "multilabel": (0, index.label_width or 0)}.get(index.label_task, (0, h, w)),
            dtype=np.int64 if index.label_task == "classification" else np.uint8)
        return ChipBatch(np.empty((0, len(names), h, w), np.float32), empty_y, [],
                         {k: np.empty(0) for k in index.meta})
    return ChipBatch(
        np.concatenate([p.x for p in parts]),
        None if parts[0].labels is None else np.concatenate([p.labels for p in parts]),
        [i for p in parts for i in (p.ids or [])],
        {k: np.concatenate([p.meta[k] for p in parts]) for k in index.meta},  # type: ignore[index]
    )


#: The split names of an EODataset: valid even when a run has no chips in one of them.
STANDARD_SPLITS = ("train", "validation", "test")


def check_split(index: ShardIndex, split: str) -> str:
    """``split`` if the shards have it (or it is a standard split with no chips), else ValueError."""
    if split in index.counts or split in STANDARD_SPLITS:
        return split
    known = sorted(set(index.splits) | set(STANDARD_SPLITS))
    raise ValueError(f"split {split!r}: not in the dataset; available: {', '.join(known)}")


def check_features(index: ShardIndex, features: Sequence[str] | None) -> list[str]:
    """The features to read, in the requested order (all, in index order, for None)."""
    if features is None:
        return list(index.features)
    if isinstance(features, str):
        features = [features]
    names = list(features)
    unknown = [f for f in names if f not in index.features]
    if unknown:
        raise ValueError(f"features {unknown}: not in the dataset; available: {', '.join(index.features)}")
    if len(set(names)) != len(names):
        raise ValueError(f"features {names}: a feature is named twice")
    if not names:
        raise ValueError(f"features: choose at least one of {', '.join(index.features)}")
    return names
