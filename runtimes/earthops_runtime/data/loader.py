"""The training loader: a PyTorch ``IterableDataset`` streaming chips from a run's shards.

``ChipDataset("s3://bucket/earthops/datasets/ns/ds/g3-ab12", "train", features=["HH", "HV"],
normalization=stats)`` reads ``shards/index.json``, then streams row groups of the split's shard files
through the :class:`~earthops.core.store.Store` (local folders natively, S3 through ranged GETs of only the
selected features' column chunks) and yields ``(x, y)``: ``x`` float32 ``(C, H, W)`` in the requested
feature order, normalised per feature; ``y`` int64 ``()`` class index (classification), float32
``(K,)`` 0/1 vector (multilabel, ready for ``BCEWithLogitsLoss``) or int64 ``(H, W)`` class map with
255 = ignore (segmentation); ``(x, y, meta)`` with ``with_meta=True``; ``x`` alone for unlabelled data.

Order. The row groups of the split form a list of units; per epoch that list is permuted by
``(seed, epoch)`` (so shard order and row-group order are both random), laid end to end, and cut
into contiguous chip ranges: first one per distributed rank, then one per DataLoader worker of that
rank (:func:`plan_segments`, a pure function). A range may start or end inside a row group, so ranks
get equal counts (``equal_ranks``: the last ``total % world_size`` chips of the permuted order are
dropped, as DDP needs the same number of batches everywhere) and workers differ by at most one chip.
Each worker then shuffles within a pool of about ``shuffle_buffer`` chips made of whole row groups
(:func:`shuffle_pool`), seeded by (seed, epoch, rank, worker): the order is deterministic for a
given (seed, epoch, world size, workers). Call :meth:`ChipDataset.set_epoch` before each epoch, as
with ``DistributedSampler`` (with ``persistent_workers=True`` the workers keep the epoch they
started with); every rank must use the same seed.

Memory and copies. A row group is decoded once into one float32 array (normalised in place); the
chips yielded are views of it, not copies (the default collate stacks them into a new batch, so
nothing outlives the batch). Keep a chip beyond that with ``.clone()``, or it keeps its row group
alive. ``prefetch`` row groups are read and decoded ahead in threads (pyarrow releases the GIL),
so per worker about ``prefetch`` + ``shuffle_buffer / rows per group`` row groups are held (by
default about 128 MiB of decoded chips for the pool).
"""

from __future__ import annotations

import math
import os
import pickle
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from earthops.core.store import Store
from earthops_runtime.data.shards import (
    ChipBatch,
    ShardIndex,
    ShardReader,
    check_features,
    check_split,
    open_source,
    read_index,
)

Normalization = tuple[Any, Any] | Mapping[str, Any]
_BUFFER_BYTES = 128 << 20


# --- decisions (pure) ---------------------------------------------------------------------------


def rank_range(total: int, rank: int, world_size: int, equal_ranks: bool = True) -> tuple[int, int]:
    """The chip range ``[lo, hi)`` of the permuted stream that ``rank`` reads."""
    if equal_ranks:
        per_rank = total // world_size
        return rank * per_rank, (rank + 1) * per_rank
    return total * rank // world_size, total * (rank + 1) // world_size


def plan_segments(
    unit_sizes: Sequence[int],
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    worker: int = 0,
    num_workers: int = 1,
    equal_ranks: bool = True,
) -> list[tuple[int, int, int]]:
    """What one worker of one rank reads in one epoch: ``(unit, start, stop)`` row ranges of units
    (row groups), in reading order. Units are permuted by ``(seed, epoch)`` when ``shuffle``."""
    sizes = np.asarray(unit_sizes, dtype=np.int64)
    order = np.random.default_rng([seed, epoch]).permutation(len(sizes)) if shuffle else np.arange(len(sizes))
    lo, hi = rank_range(int(sizes.sum()), rank, world_size, equal_ranks)
    n = hi - lo
    wlo, whi = lo + n * worker // num_workers, lo + n * (worker + 1) // num_workers
    out: list[tuple[int, int, int]] = []
    pos = 0
    for unit in order:
        size = int(sizes[unit])
        start, stop = max(wlo, pos), min(whi, pos + size)
        if start < stop:
            out.append((int(unit), start - pos, stop - pos))
        pos += size
        if pos >= whi:
            break
    return out


def shuffle_pool(batches: Iterable[Sequence[Any]], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Yield the items of ``batches`` shuffled within a pool of about ``size`` items.

    The pool holds whole batches: ``ceil(size / longest batch so far)`` of them (at least one). Each step
    yields an item drawn uniformly from the pool; a batch that runs out is replaced by the next one.
    Memory is bounded by those batches, where a reservoir of single items would keep one item of
    each of many batches alive, and with it the batch it is a view of."""
    pool: list[list[Any]] = []  # [batch, order of its items, items yielded]
    remaining = 0
    capacity: int | None = None
    longest = 0
    source = iter(batches)
    draws = np.empty(0)
    k = 0
    while True:
        while capacity is None or len(pool) < capacity:
            batch = next(source, None)
            if batch is None:
                break
            if len(batch):
                pool.append([batch, rng.permutation(len(batch)), 0])
                remaining += len(batch)
                longest = max(longest, len(batch))  # a first, partial row group must not set a big pool
                capacity = max(1, math.ceil(size / longest))
        if not remaining:
            return
        if k == len(draws):
            draws, k = rng.random(1024), 0
        r = int(draws[k] * remaining)
        k += 1
        for slot, entry in enumerate(pool):  # noqa: B007 - the slot found is used after the loop
            left = len(entry[0]) - entry[2]
            if r < left:
                break
            r -= left
        batch, order, taken = entry
        yield batch[int(order[taken])]
        entry[2] += 1
        remaining -= 1
        if entry[2] == len(batch):
            pool.pop(slot)


def _values(v: Any, features: Sequence[str], what: str) -> np.ndarray:
    if isinstance(v, Mapping):
        missing = [f for f in features if f not in v]
        if missing:
            raise ValueError(f"normalization {what}: no value for features {missing} (has {sorted(v)})")
        return np.asarray([float(v[f]) for f in features], dtype=np.float64)
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        return np.full(len(features), float(arr[0]))
    if arr.size != len(features):
        raise ValueError(f"normalization {what}: {arr.size} values for {len(features)} features {list(features)} "
                         "(give one per feature in the requested order, or a name -> value mapping)")
    return arr


def _from_stats(stats: Mapping[str, Any], features: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the training split from a run's ``stats.json`` (``earthops_runtime.data.stats``)."""
    from earthops_runtime.data.stats import normalization  # noqa: PLC0415 - only for this form

    if not isinstance(stats.get("splits"), Mapping):
        raise ValueError("normalization: a dict must be a run's stats.json (with 'splits'); "
                         "otherwise give (mean, std)")
    try:
        mean, std = normalization(stats, "train", list(features))
    except KeyError as exc:
        raise ValueError(f"normalization: {exc.args[0]}") from None
    return mean.astype(np.float64), std.astype(np.float64)


def resolve_normalization(normalization: Normalization | None,
                          features: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-feature float32 ``(mean, std)`` in the order of ``features``, from ``(mean, std)`` (sequences
    in that order, mappings by name, or scalars) or a run's ``stats.json`` document (its training
    split's statistics). A std that is zero or not finite becomes 1 (a constant feature is centred,
    not blown up)."""
    if normalization is None:
        return None
    if isinstance(normalization, Mapping):
        mean, std = _from_stats(normalization, features)
    elif isinstance(normalization, tuple | list) and len(normalization) == 2:
        mean, std = _values(normalization[0], features, "mean"), _values(normalization[1], features, "std")
    else:
        raise ValueError("normalization: expected (mean, std) or a stats.json dict")
    if not np.all(np.isfinite(mean)):
        raise ValueError(f"normalization mean {mean.tolist()}: values must be finite")
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


# --- the dataset --------------------------------------------------------------------------------


class ChipDataset(IterableDataset):
    """Chips of one split of an EODataset run, streamed from its shards (see the module docstring).

    ``source``: the run folder's URI (``s3://bucket/root/datasets/ns/name/run-id``, ``file://...``,
    a path), or a :class:`Store` with ``key`` the run folder in it; the ``shards/`` folder or the
    ``index.json`` itself are accepted too. ``env``: S3 settings (``AWS_ACCESS_KEY_ID``, ...,
    ``AWS_ENDPOINT_URL``) instead of the process environment, as for :meth:`Store.from_uri`.
    ``features``: names in the order wanted (default: all, in the dataset's order).
    ``normalization``: ``(mean, std)`` or the run's stats.json dict (:func:`resolve_normalization`).
    ``rank``/``world_size``: the distributed rank (default: ``torch.distributed`` when initialised).
    ``prefetch``: row groups read ahead in threads (0: read inline). ``decode_threads``: let pyarrow
    decode columns in parallel (default: only when not in a DataLoader worker).
    """

    def __init__(
        self,
        source: str | Store,
        split: str = "train",
        *,
        key: str = "",
        features: Sequence[str] | None = None,
        normalization: Normalization | None = None,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        equal_ranks: bool = True,
        with_meta: bool = False,
        prefetch: int = 2,
        decode_threads: bool | None = None,
        env: Mapping[str, str] | None = None,
    ):
        super().__init__()
        self._store, key = open_source(source, key, env)
        self._store_pid: int | None = os.getpid()
        self._reader: ShardReader | None = None
        self._reader_pid: int | None = None
        self.index: ShardIndex
        self.index, self._shards_key = read_index(self._store, key)
        self.split = check_split(self.index, split)
        self.features = check_features(self.index, features)
        norm = resolve_normalization(normalization, self.features)
        self._mean, self._std = (None, None) if norm is None else (norm[0][None, :, None, None], norm[1][None, :, None, None])
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        if self.seed < 0:
            raise ValueError(f"seed {seed}: must be >= 0")
        if (rank is None) != (world_size is None):
            raise ValueError("rank and world_size: give both or neither")
        if rank is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.rank, self.world_size = int(rank or 0), int(world_size or 1)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank}: must be in [0, world_size={self.world_size})")
        self.equal_ranks = bool(equal_ranks)
        self.with_meta = bool(with_meta)
        self.prefetch = max(0, int(prefetch))
        self.decode_threads = decode_threads
        self.files = self.index.files_of(self.split)
        self._units = [(i, rg) for i, f in enumerate(self.files) for rg in range(len(f.row_groups))]
        self._unit_sizes = [self.files[i].row_groups[rg] for i, rg in self._units]
        h, w = self.index.chip_shape
        chip_bytes = 4 * len(self.features) * h * w
        self.shuffle_buffer = int(shuffle_buffer) if shuffle_buffer is not None else min(
            4096, max(64, _BUFFER_BYTES // chip_bytes))
        self.epoch = 0

    # -- what it holds --

    @property
    def total_chips(self) -> int:
        """Chips in the split (all ranks)."""
        return sum(self._unit_sizes)

    @property
    def num_chips(self) -> int:
        """Chips this rank yields per epoch (over all its DataLoader workers)."""
        lo, hi = rank_range(self.total_chips, self.rank, self.world_size, self.equal_ranks)
        return hi - lo

    def __len__(self) -> int:
        return self.num_chips

    @property
    def label_task(self) -> str | None:
        return self.index.label_task

    @property
    def classes(self) -> list[str]:
        return list(self.index.classes)

    @property
    def chip_shape(self) -> tuple[int, int]:
        return self.index.chip_shape

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order (same seed + epoch = same order)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch {epoch}: must be >= 0")
        self.epoch = int(epoch)

    # -- processes --

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"] = state["_reader_pid"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._store_pid = os.getpid()  # the store was just rebuilt from its pickle: fresh in this process

    def _get_reader(self) -> ShardReader:
        pid = os.getpid()
        if self._reader is None or self._reader_pid != pid:
            if self._store_pid != pid:
                # a forked DataLoader worker: the parent's S3 client and its event loop do not survive
                # fork; a pickle round trip builds a new filesystem from the same settings
                self._store = pickle.loads(pickle.dumps(self._store))
                self._store_pid = pid
            self._reader = ShardReader(self._store, self._shards_key, self.index)
            self._reader_pid = pid
        return self._reader

    # -- iteration --

    def segments(self, worker: int = 0, num_workers: int = 1) -> list[tuple[int, int, int, int]]:
        """``(file, row group, start, stop)`` read by ``worker`` this epoch, in order."""
        plan = plan_segments(self._unit_sizes, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
                             rank=self.rank, world_size=self.world_size, worker=worker,
                             num_workers=num_workers, equal_ranks=self.equal_ranks)
        return [(*self._units[u], a, b) for u, a, b in plan]

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        segments = self.segments(worker, num_workers)
        reader = self._get_reader()
        # pyarrow's own threads only where no DataLoader workers already use the cores
        threads = num_workers == 1 if self.decode_threads is None else self.decode_threads
        batches = (self._chips(b) for b in self._batches(reader, segments, use_threads=threads))
        if self.shuffle and self.shuffle_buffer > 1:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, 1])
            return shuffle_pool(batches, self.shuffle_buffer, rng)
        return (chip for chips in batches for chip in chips)

    def _load(self, reader: ShardReader, segment: tuple[int, int, int, int], use_threads: bool) -> ChipBatch:
        file, rg, start, stop = segment
        batch = reader.read(self.files[file], rg, self.features, ids=self.with_meta, meta=self.with_meta,
                            use_threads=use_threads).slice(start, stop)
        if self._mean is not None:
            batch.x -= self._mean
            batch.x /= self._std
        return batch

    def _batches(self, reader: ShardReader, segments: list[tuple[int, int, int, int]],
                 use_threads: bool) -> Iterator[ChipBatch]:
        if self.prefetch == 0:
            for segment in segments:
                yield self._load(reader, segment, use_threads)
            return
        pool = ThreadPoolExecutor(max_workers=self.prefetch, thread_name_prefix="earthops-shards")
        try:
            pending = deque(pool.submit(self._load, reader, s, use_threads) for s in segments[: self.prefetch])
            following = iter(segments[self.prefetch:])
            while pending:
                batch = pending.popleft().result()
                nxt = next(following, None)
                if nxt is not None:
                    pending.append(pool.submit(self._load, reader, nxt, use_threads))
                yield batch
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _chips(self, batch: ChipBatch) -> Sequence[Any]:
        return _Chips(batch, self.index.label_task, self.with_meta)


class _Chips(Sequence):
    """The per-chip items of one decoded row group. A chip's tensor is a view of the row group's
    array: no copy per chip (the default collate stacks chips into a new batch tensor)."""

    def __init__(self, batch: ChipBatch, task: str | None, with_meta: bool):
        self.batch = batch
        self.xs = torch.from_numpy(batch.x)
        self.ys = None
        if batch.labels is not None:
            self.ys = torch.from_numpy(batch.labels.astype(np.float32 if task == "multilabel" else np.int64))
        self.with_meta = with_meta

    def __len__(self) -> int:
        return len(self.batch)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        x = self.xs[i]
        if self.ys is None and not self.with_meta:
            return x
        item: tuple[Any, ...] = (x,) if self.ys is None else (x, self.ys[i])
        if self.with_meta:
            meta = {"id": self.batch.ids[i]}  # type: ignore[index]
            meta.update({k: v[i].item() if hasattr(v[i], "item") else v[i] for k, v in (self.batch.meta or {}).items()})
            item = (*item, meta)
        return item


def steps_per_epoch(dataset: ChipDataset, batch_size: int, num_workers: int = 0, drop_last: bool = False) -> int:
    """Batches a DataLoader over ``dataset`` gives per epoch (each worker batches its own chips)."""
    workers = max(1, num_workers)
    n = dataset.num_chips
    counts = [n * (w + 1) // workers - n * w // workers for w in range(workers)]
    rounding = math.floor if drop_last else math.ceil
    return sum(rounding(c / batch_size) for c in counts)
