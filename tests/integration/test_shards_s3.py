"""Training shards written to and streamed from a real S3 server (SeaweedFS on loopback) through the Store.

Fixtures from ``tests.infra.pytest_s3``: ``s3_server``, ``s3_bucket``, ``s3_env`` (the AWS variables
of the server, set for the test).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from earthops.core.store import Store
from earthops_runtime.data.loader import ChipDataset
from earthops_runtime.data.shards import INDEX_KEY, ShardWriter, read_index, read_split, write_index

pytestmark = pytest.mark.integration

FEATURES = ["HH", "HV", "band_avg", "ratio"]
SHAPE = (32, 32)
RUN = "datasets/default/iceberg/g1-s3"


def chips(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES), *SHAPE)).astype(np.float32)
    return x, rng.integers(0, 2, n), [f"s{seed}-{i:04d}" for i in range(n)], {
        "scene_id": [f"scene-{i % 4}" for i in range(n)], "row": np.arange(n), "col": np.arange(n) + 1,
        "x": np.arange(n) * 10.0, "y": np.arange(n) * -10.0}


@pytest.fixture
def s3_run(s3_env, s3_bucket):
    store = Store.from_uri(f"s3://{s3_bucket}/earthops")
    data = {"train": chips(260, 1), "validation": chips(40, 2)}
    with store.publish(RUN) as run:
        summaries = []
        for t in range(2):  # two writers, as two Ray tasks
            with ShardWriter(run, FEATURES, SHAPE, "classification", ["ship", "iceberg"], 64,
                             task_id=f"task{t}", rows_per_group=32) as writer:
                for split, (x, y, ids, meta) in data.items():
                    part = slice(t, None, 2)
                    writer.write(split, x[part], y[part], ids[part], {k: np.asarray(v)[part] for k, v in meta.items()})
            summaries.append(writer.summary)
        write_index(run, summaries)
    return store, data


def test_shards_round_trip_through_s3(s3_run, s3_server, s3_bucket):
    store, data = s3_run
    assert store.is_published(RUN)
    # what another client sees in the bucket: the index and parquet parts under shards/<split>/
    keys = sorted(p.removeprefix(f"{s3_bucket}/earthops/{RUN}/") for p in s3_server.filesystem().find(f"{s3_bucket}/earthops/{RUN}"))
    assert INDEX_KEY in keys
    assert "shards/train/part-task0-00000.parquet" in keys and "shards/validation/part-task1-00000.parquet" in keys
    for split, (x, y, ids, meta) in data.items():
        back = read_split(store.url(RUN), split)
        order = np.argsort(back.ids)
        assert [back.ids[i] for i in order] == sorted(ids) == ids
        np.testing.assert_array_equal(back.x[order], x)
        np.testing.assert_array_equal(back.labels[order], y)
        np.testing.assert_array_equal(back.meta["scene_id"][order], np.asarray(meta["scene_id"]))
        # streamed by the loader, shuffled: the same chips
        ds = ChipDataset(store.url(RUN), split, seed=3, shuffle_buffer=32, with_meta=True)
        seen = {}
        for xi, yi, m in ds:
            seen[m["id"]] = (xi, yi)
        assert sorted(seen) == ids
        for i, cid in enumerate(ids):
            assert torch.equal(seen[cid][0], torch.from_numpy(x[i])) and seen[cid][1].item() == y[i]


def test_feature_subset_fetches_only_those_columns(s3_run):
    store, data = s3_run
    x, _, ids, _ = data["train"]
    fetched = []
    fs = store.fs
    original = fs.cat_ranges

    def counting(paths, starts, ends, *args, **kwargs):
        fetched.append(sum(e - s for s, e in zip(starts, ends, strict=True)))
        return original(paths, starts, ends, *args, **kwargs)

    fs.cat_ranges = counting
    try:
        full = ChipDataset(store, "train", key=RUN, shuffle=False, prefetch=0, with_meta=True)
        list(full)
        full_bytes, fetched[:] = sum(fetched), []
        subset = ChipDataset(store, "train", key=RUN, features=["ratio", "HH"], shuffle=False, with_meta=True)
        got = {m["id"]: xi for xi, _, m in subset}
        subset_bytes = sum(fetched)
    finally:
        del fs.cat_ranges
    assert subset_bytes < 0.6 * full_bytes, (subset_bytes, full_bytes)  # 2 of 4 features (+ labels)
    for i, cid in enumerate(ids):
        assert torch.equal(got[cid], torch.from_numpy(x[i][[FEATURES.index("ratio"), FEATURES.index("HH")]]))


def test_dataloader_workers_stream_from_s3(s3_run):
    """Forked DataLoader workers each open their own S3 client (the parent's does not survive fork)."""
    store, data = s3_run
    _, _, ids, _ = data["train"]
    ds = ChipDataset(store.url(RUN), "train", seed=0, with_meta=True, normalization=([0.0] * 4, [2.0] * 4))
    list(ds)  # the parent's client is in use before the fork
    seen = []
    for xb, yb, meta in DataLoader(ds, batch_size=50, num_workers=2):
        assert xb.shape[1:] == (4, *SHAPE) and yb.dtype == torch.int64
        seen += meta["id"]
    assert sorted(seen) == ids


def test_credentials_from_env_argument(s3_run, s3_env, monkeypatch):
    store, data = s3_run
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    ds = ChipDataset(store.url(RUN), "validation", env=s3_env, shuffle=False)
    assert ds.num_chips == 40 and len(list(ds)) == 40
    index, _ = read_index(Store.from_uri(store.url(RUN), env=s3_env))
    assert index.counts == {"train": 260, "validation": 40}
