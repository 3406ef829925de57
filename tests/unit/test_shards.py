"""Training shards and the streaming loader on a local store (S3: tests/integration/test_shards_s3.py)."""

from __future__ import annotations

import json
import os

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from earthops.core.store import Store, StoreError
from earthops_runtime.data import loader as loader_module
from earthops_runtime.data.loader import (
    ChipDataset,
    plan_segments,
    resolve_normalization,
    shuffle_pool,
    steps_per_epoch,
)
from earthops_runtime.data.shards import (
    COMPRESSION,
    INDEX_KEY,
    ShardReader,
    ShardWriter,
    read_index,
    read_row_group_ranged,
    read_split,
    write_index,
)

pytestmark = pytest.mark.unit

FEATURES = ["VV", "VH", "band_avg", "ratio", "NDVI"]
SHAPE = (8, 6)
CLASSES = ["water", "ice", "ship"]
RUN = "datasets/default/iceberg/g1-abc"


def make_chips(n: int, task: str | None, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    h, w = SHAPE
    x = rng.normal(size=(n, len(FEATURES), h, w)).astype(np.float32)
    x[:, 0] += np.arange(n, dtype=np.float32)[:, None, None]  # chip i's VV carries i: easy to follow
    if task == "classification":
        y = rng.integers(0, len(CLASSES), n)
    elif task == "multilabel":
        y = rng.integers(0, 2, (n, len(CLASSES)))
    elif task == "segmentation":
        y = rng.integers(0, len(CLASSES), (n, h, w)).astype(np.uint8)
        y[:, 0, 0] = 255  # ignore
    else:
        y = None
    ids = [f"chip-{i:05d}" for i in range(n)]
    meta = {"scene_id": [f"S1A_{i % 3}" for i in range(n)], "row": np.arange(n) // 10, "col": np.arange(n) % 10,
            "x": 500000.0 + np.arange(n) * 10.0, "y": 4.5e6 - np.arange(n) * 10.0}
    return {"x": x, "y": y, "ids": ids, "meta": meta}


def write_run(store: Store, task: str | None, n_train: int = 300, n_test: int = 70, *, writers: int = 2,
              chips_per_shard: int = 64, rows_per_group: int = 16, dtype: str = "float32", seed: int = 0):
    """Chips split over ``writers`` writers (as Ray tasks would), published as one run."""
    data = {"train": make_chips(n_train, task, seed), "test": make_chips(n_test, task, seed + 1)}
    with store.publish(RUN) as run:
        summaries = []
        for t in range(writers):
            with ShardWriter(run, FEATURES, SHAPE, task, CLASSES, chips_per_shard, task_id=f"task{t}",
                             rows_per_group=rows_per_group, dtype=dtype) as writer:
                for split, d in data.items():
                    part = slice(t, None, writers)
                    # several writes of odd sizes, so row groups and shards cross write boundaries
                    idx = np.arange(len(d["ids"]))[part]
                    for chunk in np.array_split(idx, 3):
                        writer.write(split, d["x"][chunk], None if d["y"] is None else d["y"][chunk],
                                     [d["ids"][i] for i in chunk], {k: np.asarray(v)[chunk] for k, v in d["meta"].items()})
            summaries.append(writer.summary)
        write_index(run, summaries)
    return data


@pytest.fixture
def store(tmp_path):
    return Store.from_uri(tmp_path.as_uri())


@pytest.fixture
def run(store):
    data = write_run(store, "classification")
    return store, data


def by_id(items, ids_key=2):
    return {meta["id"]: item for *item, meta in items}


# --- format -------------------------------------------------------------------------------------


def test_layout_index_and_parquet_columns(store):
    write_run(store, "classification", n_train=300, writers=2, chips_per_shard=64, rows_per_group=16)
    index = store.read_json(f"{RUN}/{INDEX_KEY}")
    assert index["features"] == FEATURES and index["dtype"] == "float32" and index["chip_shape"] == list(SHAPE)
    assert index["label"]["task"] == "classification" and index["label"]["classes"] == CLASSES
    assert index["counts"] == {"test": 70, "train": 300}
    train = index["splits"]["train"]["files"]
    # 150 chips per writer -> 64 + 64 + 22, row groups of 16
    assert [f["path"] for f in train] == [f"train/part-task{t}-{n:05d}.parquet" for t in range(2) for n in range(3)]
    assert [f["chips"] for f in train] == [64, 64, 22] * 2
    assert train[0]["row_groups"] == [16] * 4 and train[2]["row_groups"] == [16, 6]
    path = store.local_path(f"{RUN}/shards/{train[0]['path']}")
    assert path.stat().st_size == train[0]["bytes"]
    schema = pq.read_schema(path)
    h, w = SHAPE
    for f in FEATURES:  # one column per feature: fixed-size binary of H*W float32
        assert str(schema.field(f).type) == f"fixed_size_binary[{h * w * 4}]"
    assert {"label", "chip_id", "scene_id", "row", "col", "x", "y"} <= set(schema.names)
    meta = pq.read_metadata(path)
    codecs = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).compression
              for i in range(meta.num_columns)}
    # the codecs the benchmarks chose: features as they are, labels and the rest LZ4
    assert {codecs[f] for f in FEATURES} == {"UNCOMPRESSED" if COMPRESSION == "none" else COMPRESSION.upper()}
    assert codecs["label"] == codecs["chip_id"] == "LZ4"  # pyarrow's name for LZ4_RAW
    assert json.loads(schema.metadata[b"earthops.shards"])["features"] == FEATURES


@pytest.mark.parametrize("task", ["classification", "multilabel", "segmentation", None])
def test_round_trip_is_exact(store, task):
    data = write_run(store, task)
    for split in ("train", "test"):
        d = data[split]
        back = read_split(store.url(RUN), split)
        order = np.argsort(back.ids)
        assert sorted(back.ids) == d["ids"]
        np.testing.assert_array_equal(back.x[order], d["x"])  # bit-exact float32
        for k, v in d["meta"].items():
            np.testing.assert_array_equal(back.meta[k][order], np.asarray(v))
        if task is None:
            assert back.labels is None
        else:
            np.testing.assert_array_equal(back.labels[order], d["y"])
        # and through the loader
        ds = ChipDataset(store.url(RUN), split, shuffle=False, with_meta=True)
        items = list(ds)
        assert len(items) == ds.num_chips == len(d["ids"])
        for item in items:
            meta = item[-1]
            i = d["ids"].index(meta["id"])
            assert item[0].dtype == torch.float32 and item[0].shape == (len(FEATURES), *SHAPE)
            assert torch.equal(item[0], torch.from_numpy(d["x"][i]))
            assert meta["scene_id"] == d["meta"]["scene_id"][i] and meta["row"] == d["meta"]["row"][i]
            if task == "classification":
                assert item[1].dtype == torch.int64 and item[1].shape == () and item[1].item() == d["y"][i]
            elif task == "multilabel":
                assert item[1].dtype == torch.float32 and item[1].tolist() == d["y"][i].tolist()
            elif task == "segmentation":
                assert item[1].dtype == torch.int64 and torch.equal(item[1], torch.from_numpy(d["y"][i].astype(np.int64)))
                assert item[1][0, 0] == 255
            else:
                assert len(item) == 2  # (x, meta): no label


def test_float16_shards_are_half_the_bytes_and_close(store, tmp_path):
    data = write_run(store, "classification", dtype="float16")
    back = read_split(store.url(RUN), "train")
    order = np.argsort(back.ids)
    np.testing.assert_allclose(back.x[order], data["train"]["x"], rtol=1e-3, atol=1e-3)
    assert back.x.dtype == np.float32
    other = Store.from_uri((tmp_path / "f32").as_uri())
    write_run(other, "classification")
    size = lambda s: sum(f.bytes for f in read_index(s, RUN)[0].files)  # noqa: E731
    assert size(store) < 0.7 * size(other)


def test_ranged_reads_give_what_native_reads_give(run):
    """The object-store path (ranged reads of column chunks) checked on local files."""
    store, _ = run
    index, shards_key = read_index(store, RUN)
    reader = ShardReader(store, shards_key, index)
    local = fsspec.filesystem("file")
    f = index.files_of("train")[1]
    meta = reader.metadata(f)
    for rg in range(len(f.row_groups)):
        for columns in (["NDVI", "VV"], FEATURES + ["label", "chip_id", "scene_id"]):
            native = reader.read_table(f, rg, columns)
            ranged = read_row_group_ranged(local, str(store.local_path(reader.key(f))), f.bytes, meta, rg, columns)
            assert ranged.equals(native)


def test_writer_copies_what_it_keeps_so_callers_may_reuse_buffers(tmp_path):
    run = Store.from_uri(tmp_path.as_uri())
    d = make_chips(10, "classification")
    buf = np.empty_like(d["x"][:5])
    xs = np.empty(5)
    with ShardWriter(run, FEATURES, SHAPE, "classification", CLASSES, 64, rows_per_group=8) as w:
        for part in (slice(0, 5), slice(5, 10)):
            buf[:] = d["x"][part]  # one buffer, refilled: the first 5 chips wait for a row group of 8
            xs[:] = d["meta"]["x"][part]  # metadata too
            w.write("train", buf, d["y"][part], d["ids"][part], {**{k: np.asarray(v)[part] for k, v in
                                                                    d["meta"].items()}, "x": xs})
    write_index(run, [w.summary])
    np.testing.assert_array_equal(read_split(run, "train").x, d["x"])
    (f,) = w.summary.files
    assert pq.read_table(tmp_path / "shards" / f.path).column("x").to_pylist() == list(d["meta"]["x"])


@pytest.mark.parametrize("task", ["classification", "segmentation", None])
def test_writing_chosen_rows_writes_what_their_gather_writes(tmp_path, task):
    """write(rows=...) stages the chosen chips straight from the batch: the same shards (files, row
    groups, bytes of every column) as writing the gathered chips, across row groups and shards."""
    d = make_chips(40, task)
    # sizes that leave part of a row group staged between writes
    picks = [np.arange(0, 40, 4), np.array([39, 1, 17, 17, 2]), np.arange(40)[::-1], np.array([], np.int64),
             np.array([5, 6, 7])]
    tables = []
    for mode in ("rows", "gather"):
        root = tmp_path / mode
        run = Store.from_uri(root.as_uri())
        with ShardWriter(run, FEATURES, SHAPE, task, CLASSES, 20, rows_per_group=7, task_id="t") as w:
            for k, pick in enumerate(picks):
                y = None if d["y"] is None else d["y"][pick]
                meta = {name: np.asarray(v)[pick] for name, v in d["meta"].items()}
                ids = [d["ids"][i] for i in pick]
                split = "train" if k % 2 == 0 else "test"
                if mode == "rows":
                    w.write(split, d["x"], y, ids, meta, rows=pick)
                else:
                    w.write(split, d["x"][pick], y, ids, meta)
        tables.append({f.path: (f.row_groups, pq.read_table(root / "shards" / f.path)) for f in w.summary.files})
    assert tables[0].keys() == tables[1].keys() and len(tables[0]) > 2
    for path, (groups, table) in tables[0].items():
        assert groups == tables[1][path][0] and table.equals(tables[1][path][1]), path


def test_chosen_rows_must_be_indices_of_the_batch(tmp_path):
    d = make_chips(4, "classification")
    w = ShardWriter(Store.from_uri(tmp_path.as_uri()), FEATURES, SHAPE, "classification", CLASSES, 16)
    with pytest.raises(ValueError, match=r"rows: indices must be in \[0, 4\)"):
        w.write("train", d["x"], d["y"][:2], d["ids"][:2], rows=[1, 4])
    with pytest.raises(ValueError, match="rows: expected a 1-d array"):
        w.write("train", d["x"], d["y"][:2], d["ids"][:2], rows=[[1, 2]])
    with pytest.raises(ValueError, match="expected 3 chip ids"):
        w.write("train", d["x"], d["y"][:3], d["ids"][:2], rows=[0, 1, 2])
    w.close()


def test_local_shards_are_written_out_whole_and_failures_are_the_stores(tmp_path, monkeypatch):
    """Every local shard goes through write_out (on disk, out of the page cache) row group by row
    group, the last time once complete; a failure there (a disk error) is the writer's StoreError
    naming the shard, raised by the write or close that waits for it."""
    from earthops_runtime.data import shards as shards_module

    real = shards_module.write_out
    seen: list[tuple[str, int]] = []

    def recording(path: str) -> None:
        real(path)
        seen.append((path, os.path.getsize(path)))

    monkeypatch.setattr(shards_module, "write_out", recording)
    d = make_chips(50, "classification")
    run = Store.from_uri(tmp_path.as_uri())
    with ShardWriter(run, FEATURES, SHAPE, "classification", CLASSES, 20, rows_per_group=6, task_id="w") as w:
        w.write("train", d["x"], d["y"], d["ids"])
    last = {p: size for p, size in seen}
    assert {os.path.basename(p) for p in last} == {os.path.basename(f.path) for f in w.summary.files}
    assert all(os.path.getsize(p) == size == f.bytes for p, size in last.items()
               for f in w.summary.files if p.endswith(f.path))
    assert len(seen) > len(last)  # row groups too, not only whole files

    def failing(path: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(shards_module, "write_out", failing)
    w = ShardWriter(Store.from_uri((tmp_path / "b").as_uri()), FEATURES, SHAPE, "classification", CLASSES, 100,
                    rows_per_group=6, task_id="w")  # one shard, still open after the write
    with pytest.raises(StoreError, match=r"write .*shards/train/part-w-00000.parquet: .*Input/output error"):
        w.write("train", d["x"], d["y"], d["ids"])  # the second row group waits for the first's
    w.abort()  # and the writer can still be abandoned cleanly

    # a caller that closes after such a failure gets what was written, each chip once
    calls: list[str] = []

    def flaky(path: str) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(shards_module, "write_out", flaky)
    run = Store.from_uri((tmp_path / "c").as_uri())
    w = ShardWriter(run, FEATURES, SHAPE, "classification", CLASSES, 100, rows_per_group=6, task_id="w")
    with pytest.raises(StoreError, match="Input/output error"):
        w.write("train", d["x"], d["y"], d["ids"])
    summary = w.close()
    (f,) = summary.files
    table = pq.read_table(tmp_path / "c" / "shards" / f.path)
    assert f.chips == table.num_rows == sum(f.row_groups) == 12
    assert table.column("chip_id").to_pylist() == d["ids"][:12]


def test_writers_must_agree_and_names_must_be_unique(store):
    with store.publish(RUN) as run:
        a = ShardWriter(run, FEATURES, SHAPE, "classification", CLASSES, 16, task_id="same")
        b = ShardWriter(run, FEATURES, SHAPE, "classification", CLASSES, 16, task_id="same")
        d = make_chips(4, "classification")
        for w in (a, b):
            w.write("train", d["x"], d["y"], d["ids"])
        with pytest.raises(ValueError, match="same file"):
            write_index(run, [a.close(), b.close()])
        c = ShardWriter(run, FEATURES[:2], SHAPE, "classification", CLASSES, 16, task_id="other")
        with pytest.raises(ValueError, match="disagree on features"):
            write_index(run, [a.summary, c.close()])
        # summaries travel as dicts (Ray task results) too
        index = write_index(run, [a.summary.to_dict()])
        assert index.counts == {"train": 4}


def test_writer_rejects_bad_input(tmp_path):
    d = make_chips(4, "classification")
    run = Store.from_uri(tmp_path.as_uri())
    if True:
        w = ShardWriter(run, FEATURES, SHAPE, "classification", CLASSES, 16)
        with pytest.raises(ValueError, match=r"arrays shape \(4, 4, 8, 6\): expected \(N, 5, 8, 6\)"):
            w.write("train", d["x"][:, :4], d["y"], d["ids"])
        with pytest.raises(ValueError, match=r"class index out of range \[0, 3\)"):
            w.write("train", d["x"], np.array([0, 1, 2, 3]), d["ids"])
        with pytest.raises(ValueError, match="expected 4 chip ids"):
            w.write("train", d["x"], d["y"], d["ids"][:3])
        with pytest.raises(ValueError, match="split 'bad/split'"):
            w.write("bad/split", d["x"], d["y"], d["ids"])
        with pytest.raises(ValueError, match="reserved"):
            ShardWriter(run, ["label", "VV"], SHAPE, "classification", CLASSES, 16)
        seg = ShardWriter(run, FEATURES, SHAPE, "segmentation", CLASSES, 16)
        with pytest.raises(ValueError, match=r"segmentation classes must be in \[0, 3\) or 255"):
            seg.write("train", d["x"], np.full((4, *SHAPE), 7), d["ids"])
        w.close()
        seg.close()


# --- loader -------------------------------------------------------------------------------------


def ids_of(ds) -> list[str]:
    return [meta["id"] for *_, meta in ds]


def test_feature_subset_in_the_requested_order(run):
    store, data = run
    ds = ChipDataset(store.url(RUN), "train", features=["NDVI", "VV"], shuffle=False, with_meta=True)
    assert ds.features == ["NDVI", "VV"]
    d = data["train"]
    for x, _, meta in ds:
        i = d["ids"].index(meta["id"])
        assert x.shape == (2, *SHAPE)
        assert torch.equal(x[0], torch.from_numpy(d["x"][i, FEATURES.index("NDVI")]))
        assert torch.equal(x[1], torch.from_numpy(d["x"][i, FEATURES.index("VV")]))


def test_unknown_feature_or_split_names_what_is_available(run):
    store, _ = run
    with pytest.raises(ValueError, match=r"features \['HH'\]: not in the dataset; available: VV, VH, band_avg, ratio, NDVI"):
        ChipDataset(store.url(RUN), "train", features=["VV", "HH"])
    with pytest.raises(ValueError, match="split 'valid': not in the dataset; available: test, train, validation"):
        ChipDataset(store.url(RUN), "valid")
    with pytest.raises(StoreError, match="no shard index"):
        ChipDataset(store.url("datasets/default/nothing"), "train")
    # a standard split without chips is empty, not an error
    assert list(ChipDataset(store.url(RUN), "validation")) == []


def test_shuffle_is_a_permutation_deterministic_per_seed_and_epoch(run):
    store, data = run
    everything = sorted(data["train"]["ids"])
    ds = ChipDataset(store.url(RUN), "train", seed=7, shuffle_buffer=32, with_meta=True)
    epoch0 = ids_of(ds)
    assert sorted(epoch0) == everything and epoch0 != everything
    assert ids_of(ds) == epoch0  # same (seed, epoch), same order
    again = ChipDataset(store.url(RUN), "train", seed=7, shuffle_buffer=32, with_meta=True)
    assert ids_of(again) == epoch0  # and from a new dataset object
    ds.set_epoch(1)
    epoch1 = ids_of(ds)
    assert sorted(epoch1) == everything and epoch1 != epoch0
    other_seed = ChipDataset(store.url(RUN), "train", seed=8, shuffle_buffer=32, with_meta=True)
    assert ids_of(other_seed) != epoch0
    # the unit order is shuffled too, not only within the buffer: the first chips come from anywhere
    firsts = {ids_of(ChipDataset(store.url(RUN), "train", seed=s, shuffle_buffer=2, with_meta=True))[0] for s in range(6)}
    assert len(firsts) > 3


def test_no_shuffle_reads_in_shard_order(run):
    store, _ = run
    ds = ChipDataset(store.url(RUN), "train", shuffle=False, with_meta=True)
    index, _ = read_index(store, RUN)
    expected = read_split(store.url(RUN), "train").ids
    assert ids_of(ds) == expected and [f.path for f in ds.files] == [f.path for f in index.files_of("train")]


@pytest.mark.parametrize("shuffle", [True, False])
def test_workers_partition_the_chips(run, monkeypatch, shuffle):
    store, data = run
    ds = ChipDataset(store.url(RUN), "train", shuffle=shuffle, seed=3, shuffle_buffer=16, with_meta=True)

    class Info:
        def __init__(self, i, n):
            self.id, self.num_workers = i, n

    seen = []
    for worker in range(2):
        monkeypatch.setattr(loader_module, "get_worker_info", lambda worker=worker: Info(worker, 2))
        seen.append(ids_of(ds))
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(data["train"]["ids"])
    assert abs(len(seen[0]) - len(seen[1])) <= 1


def test_dataloader_workers_partition_and_batch(run):
    """Real DataLoader worker processes (fork): disjoint, complete, batched by the default collate."""
    store, data = run
    ds = ChipDataset(store.url(RUN), "train", seed=1, shuffle_buffer=16, with_meta=True)
    loader = DataLoader(ds, batch_size=32, num_workers=2)
    ids, batches = [], 0
    for x, y, meta in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (len(FEATURES), *SHAPE) and y.dtype == torch.int64
        ids += meta["id"]
        batches += 1
    assert sorted(ids) == sorted(data["train"]["ids"]) and len(ids) == len(set(ids))
    assert batches == steps_per_epoch(ds, 32, num_workers=2)


def test_ranks_partition_the_chips(run):
    store, data = run
    total = len(data["train"]["ids"])  # 300
    for world in (2, 3, 7):
        parts = [ids_of(ChipDataset(store.url(RUN), "train", seed=5, rank=r, world_size=world, with_meta=True))
                 for r in range(world)]
        assert {len(p) for p in parts} == {total // world}  # equal counts: DDP needs them
        flat = [i for p in parts for i in p]
        assert len(flat) == len(set(flat)) and len(flat) == total - total % world
        every = [ids_of(ChipDataset(store.url(RUN), "train", seed=5, rank=r, world_size=world, equal_ranks=False,
                                    with_meta=True)) for r in range(world)]
        assert sorted(i for p in every for i in p) == sorted(data["train"]["ids"])
        assert ChipDataset(store.url(RUN), "train", rank=0, world_size=world).num_chips == total // world
    with pytest.raises(ValueError, match="rank 2: must be in"):
        ChipDataset(store.url(RUN), "train", rank=2, world_size=2)


def test_plan_segments_covers_every_chip_once():
    rng = np.random.default_rng(0)
    for _ in range(50):
        sizes = rng.integers(1, 40, rng.integers(1, 30)).tolist()
        world, workers = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        covered = []
        for rank in range(world):
            for worker in range(workers):
                for unit, a, b in plan_segments(sizes, shuffle=True, seed=1, epoch=2, rank=rank, world_size=world,
                                                worker=worker, num_workers=workers, equal_ranks=False):
                    assert 0 <= a < b <= sizes[unit]
                    covered += [(unit, r) for r in range(a, b)]
        assert sorted(covered) == [(u, r) for u, s in enumerate(sizes) for r in range(s)]


def test_shuffle_pool_is_a_permutation_holding_few_batches():
    pulled = []

    def batches():
        for b in range(20):
            pulled.append(b)
            yield [(b, i) for i in range(10)]

    out = []
    for item in shuffle_pool(batches(), 25, np.random.default_rng(0)):
        out.append(item)
        finished = sum(1 for b in set(pulled) if sum(1 for o in out if o[0] == b) == 10)
        assert len(pulled) - finished <= 3  # ceil(25 / 10) batches in the pool at most
    assert sorted(out) == [(b, i) for b in range(20) for i in range(10)]
    assert out[:10] != sorted(out[:10]) and len({b for b, _ in out[:10]}) > 1  # mixed across batches


def test_normalisation_per_feature(run):
    store, data = run
    d = data["train"]
    feats = ["VH", "VV"]
    mean, std = [1.0, -2.0], [2.0, 4.0]
    expected = {i: (d["x"][k, [FEATURES.index(f) for f in feats]] - np.array(mean, np.float32)[:, None, None])
                / np.array(std, np.float32)[:, None, None] for k, i in enumerate(d["ids"])}
    stats = {"splits": {"train": {"features": {  # a run's stats.json: the training split counts
        "VV": {"mean": -2.0, "std": 4.0}, "VH": {"mean": 1.0, "std": 2.0}, "NDVI": {"mean": 0.0, "std": 1.0}}},
        "test": {"features": {"VV": {"mean": 9.0, "std": 9.0}, "VH": {"mean": 9.0, "std": 9.0}}}}}
    for normalization in ((mean, std), ({"VV": -2.0, "VH": 1.0}, {"VV": 4.0, "VH": 2.0}), stats):
        ds = ChipDataset(store.url(RUN), "train", features=feats, normalization=normalization, shuffle=False,
                         with_meta=True)
        for x, _, meta in ds:
            np.testing.assert_allclose(x.numpy(), expected[meta["id"]], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"no statistics for features \['ratio'\]"):
        ChipDataset(store.url(RUN), "train", features=["ratio"], normalization=stats)
    with pytest.raises(ValueError, match="must be a run's stats.json"):
        resolve_normalization({"mean": [0, 0]}, feats)
    with pytest.raises(ValueError, match="3 values for 2 features"):
        resolve_normalization(([0, 0, 0], [1, 1, 1]), feats)
    mean_, std_ = resolve_normalization(([0.0, 1.0], [0.0, float("nan")]), feats)
    assert std_.tolist() == [1.0, 1.0]  # a constant feature is centred, not divided by zero


def test_dataset_is_picklable_and_reads_after_unpickling(run):
    import pickle

    store, data = run
    ds = ChipDataset(store, "train", key=RUN, features=["VV"], shuffle=False)
    list(ds)
    copy = pickle.loads(pickle.dumps(ds))
    assert [x[0].tolist() for x, _ in copy] == [x[0].tolist() for x, _ in ds]


def test_source_forms(run):
    store, data = run
    n = len(data["train"]["ids"])
    for source, key in ((store.url(RUN), ""), (store, RUN), (store.url(f"{RUN}/shards"), ""),
                        (store.url(f"{RUN}/shards/index.json"), ""), (str(store.local_path(RUN)), "")):
        assert ChipDataset(source, "train", key=key).num_chips == n
