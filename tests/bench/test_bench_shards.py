"""Shard format benchmark: per-feature Parquet shards against the alternatives, side by side.

Formats (the same chips, the same shard and row-group sizes):

* ``pq/zstd1``, ``pq/zstd3``, ``pq/lz4``, ``pq/raw`` — earthops' layout, one ``fixed_size_binary``
  column per feature, written by :class:`~earthops_runtime.data.shards.ShardWriter` with each codec
  and read by :class:`~earthops_runtime.data.loader.ChipDataset` (inline and single-threaded here,
  like the other readers, so the table compares formats, not prefetching). The starred one is what
  ``ShardWriter`` writes by default (``shards.COMPRESSION``);
* ``pq/f16``     — the default layout and codec at float16 (lossy: an option, not the default);
* ``pq/one-col`` — Parquet, default codec, one column holding every channel of a chip;
* ``tar/npy``    — WebDataset style: a tar per shard of ``<id>.npy`` + ``<id>.cls`` members, read
  front to back (one GET per shard on S3).

Measured: bytes stored; write; a full read; reads of 2 of the 14 features (a model or trial using
a feature group) and of 13 (leave-one-feature-out ablation); a shuffled
full read (each format's best shuffle: Parquet in random row-group order, tar in random shard order,
both through the same shuffle buffer). Every read yields per-chip float32 tensors (C, H, W) and
labels, as a training loop consumes them. Throughput is chips per second (one chip: 14 x 64 x 64
float32 = 229 KB), in two forms: per wall-clock second (best round), and per CPU second spent
by this process plus, for S3, the S3 server (the cost that scales in a cluster, and the measure
that stays meaningful when other work shares the machine). Ratios are the default over each
alternative, from this run.

Local reads come from the page cache (the files were just written); S3 is SeaweedFS on loopback, so
the network is not the bottleneck there and the S3 numbers measure request and decode costs.
``EARTHOPS_BENCH_CHIPS`` sets the number of chips (default 1024), ``EARTHOPS_BENCH_REPEATS`` the
rounds (default 3; the best round counts).
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from earthops.core.store import Store
from earthops_runtime.data.loader import ChipDataset, plan_segments, shuffle_pool
from earthops_runtime.data.shards import (
    COMPRESSION,
    COMPRESSION_LEVEL,
    ShardWriter,
    default_rows_per_group,
    read_row_group_ranged,
    write_index,
)

pytestmark = pytest.mark.bench

FEATURES = ["VV", "VH", "band_avg", "ratio", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "NDVI", "NDWI"]
SUBSET = ["VH", "NDVI"]  # a model or ablation trial using 2 of the 14 features
ALL_BUT_ONE = FEATURES[:6] + FEATURES[7:]  # leave-one-feature-out (B04 dropped)
SIZE = 64
CHIPS = int(os.environ.get("EARTHOPS_BENCH_CHIPS", "1024"))
CHIPS_PER_SHARD = 512
ROWS_PER_GROUP = default_rows_per_group(4 * len(FEATURES) * SIZE * SIZE)  # what ShardWriter picks
BUFFER = 512
REPEATS = int(os.environ.get("EARTHOPS_BENCH_REPEATS", "3"))
SEED = 0


def synthetic_chips(n: int, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """EO-like chips over smooth spatial fields: Sentinel-1 backscatter in dB with gamma speckle (VV,
    VH, their average and difference), 8 Sentinel-2 L2A reflectance bands (uint16 DN / 10000, the
    20 m bands at half resolution brought to the 10 m grid) and two normalised-difference indices.
    Compressibility is what matters: it is close to that of the real BigEarthNet patches
    (``test_real_patches_compress_like_the_synthetic_ones`` prints both)."""
    rng = np.random.default_rng(seed)
    cells = 8
    coarse = rng.normal(size=(n, 3, cells, cells)).astype(np.float32)
    base = np.repeat(np.repeat(coarse, size // cells, axis=2), size // cells, axis=3)
    sigma = 0.05 * np.exp(0.5 * base[:, 0])
    vv = sigma * rng.gamma(4.4, 1 / 4.4, sigma.shape)
    vh = 0.2 * sigma * np.exp(0.3 * base[:, 1]) * rng.gamma(4.4, 1 / 4.4, sigma.shape)
    vv_db, vh_db = 10 * np.log10(vv), 10 * np.log10(vh)
    feats = [vv_db, vh_db, (vv_db + vh_db) / 2, vv_db - vh_db]
    refl = []
    for b, is_20m in enumerate((False, False, False, True, True, True, False, True)):
        s = size // 2 if is_20m else size
        field = np.repeat(np.repeat(coarse[:, 2], s // cells, 1), s // cells, 2)
        dn = np.clip(np.round((0.05 + 0.02 * b + 0.02 * np.exp(0.4 * field) + 0.002 * rng.normal(size=(n, s, s)))
                              * 10000), 0, 10000)
        if is_20m:
            dn = np.repeat(np.repeat(dn, 2, 1), 2, 2)
        refl.append(dn / 10000)
    feats += refl
    red, nir, swir = refl[2], refl[6], refl[7]
    feats += [(nir - red) / (nir + red + 1e-6), (nir - swir) / (nir + swir + 1e-6)]
    x = np.stack(feats, axis=1).astype(np.float32)
    return x, rng.integers(0, 2, n), [f"chip-{i:06d}" for i in range(n)]


def fs_path(store: Store, key: str) -> str:
    if store.is_local:
        store.local_path(key).parent.mkdir(parents=True, exist_ok=True)
        return str(store.local_path(key))
    return store.url(key)


def stored_bytes(store: Store, key: str) -> int:
    return sum(store.fs.size(fs_path(store, k)) for k in store.list(key))


def chip_items(x: np.ndarray, y: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-chip (x, y) tensors, views of the batch (as ChipDataset yields them)."""
    xs, ys = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    return [(xs[i], ys[i]) for i in range(len(x))]


def chips_of(batches: Iterator[list], shuffle: bool) -> Iterator:
    """Every reader's chips go through the loader's shuffle (or none), so only the format differs."""
    if shuffle:
        return shuffle_pool(batches, BUFFER, np.random.default_rng(SEED))
    return (chip for batch in batches for chip in batch)


# --- the formats ----------------------------------------------------------------------------------


class ParquetFeatures:
    """One column per feature, written by ShardWriter (its defaults unless told), read by ChipDataset."""

    def __init__(self, name: str, dtype: str = "float32", compression: str | None = None, level: int | None = None):
        self.name, self.dtype = name, dtype
        self.codec = {} if compression is None else {"compression": compression, "compression_level": level}

    def write(self, store: Store, key: str, x: np.ndarray, y: np.ndarray, ids: list[str]) -> None:
        run = Store.from_uri(store.url(key))
        features = FEATURES[: x.shape[1]]
        with ShardWriter(run, features, x.shape[-2:], "classification", ["ship", "iceberg"], CHIPS_PER_SHARD,
                         task_id="bench", dtype=self.dtype, rows_per_group=ROWS_PER_GROUP, **self.codec) as w:
            w.write("train", x, y, ids)
        write_index(run, [w.summary])

    def read(self, store: Store, key: str, features: list[str] | None, shuffle: bool) -> Iterator:
        # inline and single-threaded, like the other readers: the format's cost, not the prefetching's
        return iter(ChipDataset(store, "train", key=key, features=features, shuffle=shuffle, seed=SEED,
                                shuffle_buffer=BUFFER, prefetch=0, decode_threads=False))


class ParquetOneColumn:
    name = "pq/one-col"

    def write(self, store: Store, key: str, x: np.ndarray, y: np.ndarray, ids: list[str]) -> None:
        chip_bytes = x[0].nbytes
        schema = pa.schema([("chip", pa.binary(chip_bytes)), ("label", pa.int32()), ("chip_id", pa.string())])
        for n, start in enumerate(range(0, len(x), CHIPS_PER_SHARD)):
            part = slice(start, start + CHIPS_PER_SHARD)
            xs = np.ascontiguousarray(x[part])
            table = pa.table({
                "chip": pa.FixedSizeBinaryArray.from_buffers(pa.binary(chip_bytes), len(xs), [None, pa.py_buffer(xs)]),
                "label": pa.array(y[part].astype(np.int32)), "chip_id": pa.array(ids[part])}, schema=schema)
            with store.fs.open(fs_path(store, f"{key}/part-{n:05d}.parquet"), "wb") as f:
                pq.write_table(table, f, row_group_size=ROWS_PER_GROUP, compression=COMPRESSION,
                               compression_level=COMPRESSION_LEVEL, use_dictionary=False,
                               write_statistics=["label"])

    def read(self, store: Store, key: str, features: list[str] | None, shuffle: bool) -> Iterator:
        files = [fs_path(store, k) for k in store.list(key)]
        metas, sizes = [], []
        for path in files:
            with store.fs.open(path, "rb") as f:
                metas.append(pq.read_metadata(f))
            sizes.append(store.fs.size(path))
        units = [(i, rg) for i, m in enumerate(metas) for rg in range(m.num_row_groups)]
        counts = [metas[i].row_group(rg).num_rows for i, rg in units]
        channels = None if features is None else [FEATURES.index(f) for f in features]

        def batches() -> Iterator[list]:
            for unit, a, b in plan_segments(counts, shuffle=shuffle, seed=SEED, epoch=0):
                i, rg = units[unit]
                if store.is_local:
                    table = pq.ParquetFile(files[i], metadata=metas[i]).read_row_group(
                        rg, columns=["chip", "label"], use_threads=False)
                else:
                    table = read_row_group_ranged(store.fs, files[i], sizes[i], metas[i], rg, ["chip", "label"],
                                                  use_threads=False)
                col = table.column("chip").chunk(0)
                x = np.frombuffer(col.buffers()[1], np.float32).reshape(len(col), len(FEATURES), SIZE, SIZE)[a:b]
                if channels is not None:
                    x = x[:, channels]
                yield chip_items(x, table.column("label").to_numpy()[a:b])

        return chips_of(batches(), shuffle)


class TarNpy:
    name = "tar/npy"

    def write(self, store: Store, key: str, x: np.ndarray, y: np.ndarray, ids: list[str]) -> None:
        for n, start in enumerate(range(0, len(x), CHIPS_PER_SHARD)):
            with store.fs.open(fs_path(store, f"{key}/part-{n:05d}.tar"), "wb") as f, \
                    tarfile.open(fileobj=f, mode="w|") as tar:
                for i in range(start, min(start + CHIPS_PER_SHARD, len(x))):
                    buf = io.BytesIO()
                    np.save(buf, x[i])
                    for name, payload in ((f"{ids[i]}.npy", buf.getvalue()), (f"{ids[i]}.cls", str(int(y[i])).encode())):
                        info = tarfile.TarInfo(name)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))

    def read(self, store: Store, key: str, features: list[str] | None, shuffle: bool) -> Iterator:
        files = [fs_path(store, k) for k in store.list(key)]
        if shuffle:
            files = [files[i] for i in np.random.default_rng(SEED).permutation(len(files))]
        channels = None if features is None else [FEATURES.index(f) for f in features]

        def batches() -> Iterator[list]:
            for path in files:
                data = store.fs.cat_file(path)  # one GET per shard: a tar is read front to back
                chips, x = [], None
                with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
                    for member in tar:
                        payload = tar.extractfile(member).read()
                        if member.name.endswith(".npy"):
                            x = np.load(io.BytesIO(payload))
                            if channels is not None:
                                x = np.ascontiguousarray(x[channels])
                        else:
                            chips.append((torch.from_numpy(x), torch.tensor(int(payload))))
                yield chips

        return chips_of(batches(), shuffle)


# what ShardWriter writes unless told otherwise
DEFAULT = "pq/raw" if COMPRESSION == "none" else f"pq/{COMPRESSION}{COMPRESSION_LEVEL or ''}"
FORMATS = [ParquetFeatures("pq/zstd1", compression="zstd", level=1),
           ParquetFeatures("pq/zstd3", compression="zstd", level=3),
           ParquetFeatures("pq/lz4", compression="lz4"),
           ParquetFeatures("pq/raw", compression="none"),
           ParquetFeatures("pq/f16", "float16"),
           ParquetOneColumn(),
           TarNpy()]
assert DEFAULT in {f.name for f in FORMATS}, DEFAULT


def drain(it: Iterator) -> int:
    n = 0
    for x, _ in it:
        assert x.dtype == torch.float32
        n += 1
    return n


READS = (("read", None, False), ("read 2/14", SUBSET, False), ("read 13/14", ALL_BUT_ONE, False),
         ("shuffled", None, True))


class Clock:
    """Wall time, and CPU time of this process plus (for S3) of the S3 server's process. On a shared
    machine wall time depends on what else runs; CPU seconds per chip barely does, and it is the
    cost that scales in a cluster (cores per GPU for decoding, server capacity)."""

    def __init__(self, server_pid: int | None = None):
        self.server_pid = server_pid
        self._tick = os.sysconf("SC_CLK_TCK")

    def _cpu(self) -> float:
        cpu = time.process_time()
        if self.server_pid:
            with open(f"/proc/{self.server_pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime
        return cpu

    def run(self, fn) -> tuple[float, float]:
        w0, c0 = time.perf_counter(), self._cpu()
        fn()
        return time.perf_counter() - w0, self._cpu() - c0


def measure(store: Store, x: np.ndarray, y: np.ndarray, ids: list[str], repeats: int,
            clock: Clock) -> dict[str, dict[str, float]]:
    """Best chips/s (wall) and best chips per CPU second of each format and operation over ``repeats``
    rounds. Rounds go round-robin over the formats, so a burst of load from elsewhere on the machine
    hits one round of every format rather than every round of one format."""
    n = len(x)
    best: dict[str, dict[str, float]] = {f.name: {} for f in FORMATS}
    written: dict[str, str] = {}

    def record(r: dict[str, float], metric: str, wall: float, cpu: float) -> None:
        r[metric] = max(r.get(metric, 0.0), n / wall)
        r[metric + " cpu"] = max(r.get(metric + " cpu", 0.0), n / max(cpu, 1e-9))

    for rep in range(repeats):
        for fmt in FORMATS:
            r = best[fmt.name]
            key = f"runs/{fmt.name.replace('/', '-')}/r{rep}"
            record(r, "write", *clock.run(lambda fmt=fmt, key=key: fmt.write(store, key, x, y, ids)))
            r["bytes"] = stored_bytes(store, key)
            if fmt.name in written:
                store.delete(written[fmt.name])
            written[fmt.name] = key
            os.sync()  # no write-back of what was just written competes with the reads
            # the reads' order turns each round: none is always the one right after the write
            for metric, features, shuffle in READS[rep % len(READS):] + READS[:rep % len(READS)]:
                counted: list[int] = []
                record(r, metric, *clock.run(
                    lambda fmt=fmt, key=key, f=features, s=shuffle: counted.append(drain(fmt.read(store, key, f, s)))))  # noqa: B023
                assert counted == [n], f"{fmt.name} {metric}: {counted} chips of {n}"
    return best


@pytest.mark.parametrize("target", ["local", "s3"])
def test_shard_formats_side_by_side(target, request, tmp_path):
    if target == "s3":
        request.getfixturevalue("s3_env")
        clock = Clock(request.getfixturevalue("s3_server").pid)
        store = Store.from_uri(f"s3://{request.getfixturevalue('s3_bucket')}/bench")
    else:
        clock = Clock()
        store = Store.from_uri((tmp_path / "store").as_uri())
    x, y, ids = synthetic_chips(CHIPS)
    n = len(x)
    measure(store, *synthetic_chips(64, seed=1), repeats=1, clock=clock)  # warm-up: allocations, codecs, connections
    load_before = os.getloadavg()[0]
    results = measure(store, x, y, ids, REPEATS, clock)
    load_after = os.getloadavg()[0]

    chip_mb = x[0].nbytes / 1e6
    print(table(f"shard formats, {target}: {n} chips of {len(FEATURES)}x{SIZE}x{SIZE} float32 ({n * chip_mb:.0f} MB), "
                f"{CHIPS_PER_SHARD} chips/shard, row groups of {ROWS_PER_GROUP}, shuffle buffer {BUFFER}; "
                f"best of {REPEATS} round-robin rounds; load average {load_before:.1f} -> {load_after:.1f} "
                f"on {os.cpu_count()} CPUs; CPU = this process"
                + (" + the S3 server" if clock.server_pid else ""), results, chip_mb))


ROWS = (("stored MB", "bytes", 1e-6),
        ("write chips/s", "write", 1), ("  per CPU-s", "write cpu", 1),
        ("read chips/s", "read", 1), ("  per CPU-s", "read cpu", 1),
        ("2/14 read chips/s", "read 2/14", 1), ("  per CPU-s", "read 2/14 cpu", 1),
        ("13/14 read chips/s", "read 13/14", 1), ("  per CPU-s", "read 13/14 cpu", 1),
        ("shuffled chips/s", "shuffled", 1), ("  per CPU-s", "shuffled cpu", 1))


def table(title: str, results: dict[str, dict[str, float]], chip_mb: float) -> str:
    """Values side by side, then the ratios of the default (starred) over each alternative."""
    names = [f.name for f in FORMATS]
    others = [m for m in names if m != DEFAULT]
    w = 11
    head = f"{'':<19}" + "".join(f"{(m + '*') if m == DEFAULT else m:>{w}}" for m in names)
    lines = [f"\n{title}", head]
    for label, metric, scale in ROWS:
        if all(metric in results[m] for m in names):
            lines.append(f"{label:<19}" + "".join(f"{results[m][metric] * scale:>{w}.0f}" for m in names))
    lines.append(f"ratio {DEFAULT}* / other" + " " * max(0, 19 - len(f"ratio {DEFAULT}* / other"))
                 + "".join(f"{m:>{w}}" for m in others))
    for label, metric, _ in ROWS:
        if all(metric in results[m] for m in names):
            lines.append(f"{label:<19}" + "".join(f"{results[DEFAULT][metric] / results[m][metric]:>{w}.2f}"
                                                   for m in others))
    lines.append(f"(chips/s x {chip_mb:.3f} = MB/s of decoded chips; ratio above 1: {DEFAULT} faster, "
                 "or for stored MB below 1: smaller)")
    return "\n".join(lines)


def real_chips(data_dir) -> np.ndarray:
    """The 6 real BigEarthNet patches as 24 chips of 60x60 with 14 features: 10 S2 bands (20 m ones
    brought to 10 m by repetition, as a nearest resampling to the common grid does) and S1 VV, VH,
    their average and difference, float32."""
    import rasterio

    patches = []
    for s2, s1 in zip(sorted((data_dir / "BigEarthNet-S2-Example").iterdir()),
                      sorted((data_dir / "BigEarthNet-S1-Example").iterdir()), strict=True):
        bands = []
        for band in ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"):
            with rasterio.open(next(s2.glob(f"*_{band}.tif"))) as src:
                a = src.read(1).astype(np.float32) / 10000
            if a.shape[0] * 2 == 120:
                a = np.repeat(np.repeat(a, 2, 0), 2, 1)
            bands.append(a)
        sar = []
        for pol in ("VV", "VH"):
            with rasterio.open(next(s1.glob(f"*_{pol}.tif"))) as src:
                sar.append(src.read(1).astype(np.float32))
        bands += [sar[0], sar[1], (sar[0] + sar[1]) / 2, sar[0] - sar[1]]
        patches.append(np.stack(bands))
    p = np.stack(patches)
    return np.concatenate([p[:, :, r:r + 60, c:c + 60] for r in (0, 60) for c in (0, 60)]).astype(np.float32)


def test_real_patches_compress_like_the_synthetic_ones(bigearthnet, tmp_path):
    """Stored bytes of each format for the real BigEarthNet chips and for synthetic chips of the same
    shape: the synthetic benchmark's compression is only meaningful if the two agree."""
    real = real_chips(bigearthnet.data_dir)
    n = len(real)
    synthetic = synthetic_chips(n, size=64, seed=2)[0][:, :, :60, :60].copy()
    store = Store.from_uri((tmp_path / "store").as_uri())
    rows = []
    for fmt in FORMATS:
        sizes = []
        for label, x in (("real", real), ("synthetic", synthetic)):
            key = f"{label}/{fmt.name.replace('/', '-')}"
            fmt.write(store, key, x, np.zeros(n, dtype=np.int64), [f"c{i}" for i in range(n)])
            sizes.append(stored_bytes(store, key) / x.nbytes)
        rows.append((fmt.name, *sizes))
    print(f"\nstored bytes / float32 bytes, {n} chips of 14x60x60 ({real.nbytes / 1e6:.1f} MB):")
    print(f"{'':<12}{'real':>10}{'synthetic':>10}")
    for name, r, s_ in rows:
        print(f"{name + ('*' if name == DEFAULT else ''):<12}{r:>10.3f}{s_:>10.3f}")
    by_name = {name: (r, s_) for name, r, s_ in rows}
    # compression must rank the same way on both: otherwise the synthetic chips mislead the choice
    for a, b in (("pq/zstd3", "pq/zstd1"), ("pq/zstd1", "pq/lz4"), ("pq/lz4", "pq/raw")):
        assert by_name[a][0] < by_name[b][0] and by_name[a][1] < by_name[b][1], (a, b, by_name)
