"""Mergeable dataset statistics (earthops_runtime.data.stats): exact moments against numpy on the
concatenated data, sampled percentiles, merges in any order, NaN handling, labels, serialisation."""

from __future__ import annotations

import itertools
import json
import pickle

import numpy as np
import pytest

from earthops_runtime.data.stats import (
    DatasetStats,
    FeatureStats,
    LabelCounts,
    merge_all,
    normalization,
)

pytestmark = pytest.mark.unit

NAMES = ["B04", "B08", "VV"]


def batches(seed: int, sizes: list[int], hw: int = 16) -> list[np.ndarray]:
    """Chips (n, 3, hw, hw): reflectance-like, near-infrared-like and dB-like channels."""
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        x = np.empty((n, 3, hw, hw), np.float32)
        x[:, 0] = rng.gamma(2.0, 0.04, (n, hw, hw))
        x[:, 1] = rng.normal(0.3, 0.08, (n, hw, hw))
        x[:, 2] = rng.normal(-15.0, 3.0, (n, hw, hw))
        out.append(x)
    return out


def reference(chunks: list[np.ndarray]) -> np.ndarray:
    """Channel -> all finite values, float64."""
    allx = np.concatenate(chunks).astype(np.float64)
    return [allx[:, c][np.isfinite(allx[:, c])] for c in range(allx.shape[1])]


def assert_exact(fd: dict, values: np.ndarray, nan: int = 0):
    assert fd["count"] == values.size and fd["nanCount"] == nan
    for key, want in (("min", values.min()), ("max", values.max()), ("mean", values.mean()), ("std", values.std())):
        assert fd[key] == pytest.approx(want, rel=1e-9, abs=1e-12), key


def rank_error(sample_estimate: float, values: np.ndarray, q: float) -> float:
    return abs(np.count_nonzero(values <= sample_estimate) / values.size - q / 100)


# --------------------------------------------------------------------------------------------------
# Exactness and merging


def test_merged_statistics_match_numpy_on_the_concatenation():
    # three Ray tasks with uneven batches; 200k values per feature in all
    chunks = batches(0, [100, 180, 3, 250, 150, 99])  # 782 chips x 256 px = 200,192 values
    parts = [DatasetStats(seed=(7, t)) for t in range(3)]
    for i, x in enumerate(chunks):
        parts[i % 3].update("train", x, NAMES)
    merged = merge_all(parts)
    d = merged.to_dict()
    ref = reference(chunks)
    assert d["splits"]["train"]["chips"] == 782
    for c, name in enumerate(NAMES):
        fd = d["splits"]["train"]["features"][name]
        assert_exact(fd, ref[c])
        assert fd["sampled"] == 65_536
        spread = np.percentile(ref[c], 99) - np.percentile(ref[c], 1)
        for q in (1, 5, 25, 50, 75, 95, 99):
            est = fd["percentiles"][f"p{q}"]
            # within 1% in rank, and within 1% of the 1-99 spread in value (the sampling error is
            # about 0.03% in rank at p1/p99 and 0.16% at p50 here; the estimate is unbiased)
            assert rank_error(est, ref[c], q) < 0.01, (name, q)
            assert est == pytest.approx(np.percentile(ref[c], q), abs=0.01 * spread), (name, q)
        h = fd["histogram"]
        assert len(h["edges"]) == 65 and len(h["counts"]) == 64 and not h["exact"]
        assert sum(h["counts"]) + h["below"] + h["above"] == pytest.approx(ref[c].size, rel=0.001)
        assert h["edges"][0] == fd["percentiles"]["p1"] and h["edges"][-1] == fd["percentiles"]["p99"]


def test_percentiles_and_histogram_are_exact_while_the_sample_holds_every_value():
    chunks = batches(1, [40, 60])  # 25,600 values per feature
    a, b = DatasetStats(seed=1), DatasetStats(seed=2)
    a.update("train", chunks[0], NAMES)
    b.update("train", chunks[1], NAMES)
    d = a.merge(b).to_dict()
    ref = reference(chunks)
    for c, name in enumerate(NAMES):
        fd = d["splits"]["train"]["features"][name]
        want = np.percentile(ref[c], [1, 5, 25, 50, 75, 95, 99])
        np.testing.assert_allclose(list(fd["percentiles"].values()), want, rtol=1e-12)
        counts, _ = np.histogram(ref[c], bins=64, range=(want[0], want[-1]))
        assert fd["histogram"]["counts"] == counts.tolist() and fd["histogram"]["exact"]


def test_large_offsets_do_not_cancel():
    # a mean 1e6 times the spread: a naive sum of squares loses every digit of the variance
    rng = np.random.default_rng(3)
    x = (1000.0 + rng.normal(0, 0.001, (64, 1, 32, 32))).astype(np.float32)
    y = (1000.0 + rng.normal(0, 0.001, (64, 1, 32, 32))).astype(np.float32)
    a = DatasetStats(seed=1).update("train", x, ["X"])
    b = DatasetStats(seed=2).update("train", y, ["X"])
    fd = a.merge(b).to_dict()["splits"]["train"]["features"]["X"]
    assert_exact(fd, np.concatenate([x, y]).astype(np.float64).ravel())


def test_merge_order_does_not_matter():
    chunks = batches(4, [30, 50, 20, 70, 400])  # 146,000 values: the sample is a proper subset
    parts = [pickle.dumps(DatasetStats(seed=(1, i)).update("train", x, NAMES).update_labels(
        "train", np.arange(x.shape[0]) % 3)) for i, x in enumerate(chunks)]

    results = []
    for order in itertools.islice(itertools.permutations(range(5)), 0, 120, 10):  # 12 orders
        total = pickle.loads(parts[order[0]])
        for i in order[1:]:
            total.merge(pickle.loads(parts[i]))
        results.append(total.to_dict())
    # and as a tree, the way a Ray reduction goes
    left = pickle.loads(parts[4]).merge(pickle.loads(parts[0]))
    right = pickle.loads(parts[2]).merge(pickle.loads(parts[3])).merge(pickle.loads(parts[1]))
    results.append(right.merge(left).to_dict())
    first = results[0]
    for d in results[1:]:
        assert d["splits"]["train"]["labels"] == first["splits"]["train"]["labels"]
        assert d["splits"]["train"]["chips"] == 570
        for name in NAMES:
            fa, fb = first["splits"]["train"]["features"][name], d["splits"]["train"]["features"][name]
            assert fa["percentiles"] == fb["percentiles"] and fa["histogram"] == fb["histogram"]
            for key in ("count", "nanCount", "min", "max"):
                assert fa[key] == fb[key]
            for key in ("mean", "std"):
                assert fa[key] == pytest.approx(fb[key], rel=1e-13)


def test_the_same_seed_and_updates_give_the_same_statistics():
    chunks = batches(5, [50, 300])
    a, b = DatasetStats(seed=3), DatasetStats(seed=3)
    for x in chunks:
        a.update("train", x, NAMES)
        b.update("train", x, NAMES)
    assert a.to_dict() == b.to_dict()
    c = DatasetStats(seed=4)
    for x in chunks:
        c.update("train", x, NAMES)
    assert c.to_dict()["splits"]["train"]["features"]["B04"]["percentiles"] != \
        a.to_dict()["splits"]["train"]["features"]["B04"]["percentiles"]


def test_merging_statistics_made_with_the_same_seed_is_refused():
    x = batches(6, [4])[0]
    a, b = DatasetStats(seed=0).update("train", x, NAMES), DatasetStats(seed=0).update("train", x, NAMES)
    with pytest.raises(ValueError, match=r"same seed|seed \(0,\)|each task its own seed"):
        a.merge(b)
    c = DatasetStats(seed=1).update("train", x, NAMES)
    a.merge(c)
    with pytest.raises(ValueError, match="each task its own seed"):
        a.merge(c)  # merging one part twice counts its data twice


def test_the_sample_of_a_merge_is_uniform_over_the_parts():
    # a part with 10x the pixels must own ~10/11 of the merged sample, whatever it was batched as
    small = np.zeros((10, 1, 32, 32), np.float32)
    big = np.ones((100, 1, 32, 32), np.float32)
    a = DatasetStats(seed=1, sample_size=4096).update("train", small, ["X"])
    b = DatasetStats(seed=2, sample_size=4096)
    for i in range(0, 100, 7):
        b.update("train", big[i:i + 7], ["X"])
    m = a.merge(b)
    share_big = float(m.samples["train"].column(0).mean())
    assert share_big == pytest.approx(100 / 110, abs=0.015)


# --------------------------------------------------------------------------------------------------
# NaN, inf and ranges


def test_nan_and_inf_count_as_missing_and_stay_out_of_the_moments():
    x = batches(7, [20])[0]
    x[0, 0, :4] = np.nan  # 4 rows of 16 px
    x[3, 0, 0, 0] = np.inf
    x[5, 2] = np.nan  # a whole chip of VV
    x[:, 1, 0, 0] = -np.inf
    d = DatasetStats(seed=0).update("train", x, NAMES).to_dict()["splits"]["train"]["features"]
    ref = reference([x])
    assert_exact(d["B04"], ref[0], nan=65)
    assert_exact(d["B08"], ref[1], nan=20)
    assert_exact(d["VV"], ref[2], nan=256)
    assert d["B04"]["nanFraction"] == pytest.approx(65 / (20 * 256))
    assert all(np.isfinite(v) for v in d["B04"]["percentiles"].values())
    json.dumps(d, allow_nan=False)


def test_an_all_nan_feature_has_counts_only():
    x = batches(8, [3])[0]
    x[:, 1] = np.nan
    fd = DatasetStats(seed=0).update("train", x, NAMES).to_dict()["splits"]["train"]["features"]["B08"]
    assert fd["count"] == 0 and fd["nanCount"] == 768 and fd["nanFraction"] == 1.0
    assert fd["min"] is fd["max"] is fd["mean"] is fd["std"] is fd["percentiles"] is fd["histogram"] is None


def test_values_outside_a_given_range_are_counted_exactly():
    chunks = batches(9, [30, 30])
    ranges = {"B08": (0.1, 0.5), "VV": (-40.0, 10.0)}
    a = DatasetStats(seed=1, ranges=ranges).update("train", chunks[0], NAMES)
    b = DatasetStats(seed=2, ranges=ranges).update("train", chunks[1], NAMES)
    d = a.merge(b).to_dict()["splits"]["train"]["features"]
    allx = np.concatenate(chunks)
    assert d["B08"]["range"] == {"min": 0.1, "max": 0.5, "below": int(np.count_nonzero(allx[:, 1] < 0.1)),
                                 "above": int(np.count_nonzero(allx[:, 1] > np.float32(0.5)))}
    assert d["B08"]["range"]["below"] > 0 and d["VV"]["range"]["below"] == d["VV"]["range"]["above"] == 0
    assert "range" not in d["B04"]


# --------------------------------------------------------------------------------------------------
# Serialisation


def test_pickle_round_trip_keeps_merging():
    chunks = batches(10, [30, 30])
    a = DatasetStats(seed=1).update("train", chunks[0], NAMES)
    a2 = pickle.loads(pickle.dumps(a))
    b = DatasetStats(seed=2).update("train", chunks[1], NAMES)
    b2 = pickle.loads(pickle.dumps(b))
    assert a.merge(b).to_dict() == a2.merge(b2).to_dict()


def test_json_round_trip_with_the_sample_merges_like_the_original():
    chunks = batches(11, [30, 30])
    a = DatasetStats(seed=1, ranges={"B04": (0, 1)}).update("train", chunks[0], NAMES)
    a.update_labels("train", np.arange(30) % 2)
    text = json.dumps(a.to_dict(include_sample=True), allow_nan=False)
    back = DatasetStats.from_dict(json.loads(text))
    b = DatasetStats(seed=2, ranges={"B04": (0, 1)}).update("train", chunks[1], NAMES)
    b.update_labels("train", np.arange(30) % 2)
    left = a.merge(DatasetStats.from_dict(json.loads(json.dumps(b.to_dict(include_sample=True))))).to_dict()
    right = back.merge(b).to_dict()
    assert left["splits"]["train"]["labels"] == right["splits"]["train"]["labels"]
    for name in NAMES:
        fl, fr = left["splits"]["train"]["features"][name], right["splits"]["train"]["features"][name]
        assert fl["percentiles"] == fr["percentiles"] and fl["count"] == fr["count"]
        assert fl["std"] == pytest.approx(fr["std"], rel=1e-12)


def test_json_summary_without_the_sample_is_read_only():
    x = batches(12, [20])[0]
    a = DatasetStats(seed=1).update("train", x, NAMES).update("validation", x[:5], NAMES)
    d = a.to_dict()
    back = DatasetStats.from_dict(json.loads(json.dumps(d)))
    again = back.to_dict()
    for name in NAMES:
        fa, fb = again["splits"]["train"]["features"][name], d["splits"]["train"]["features"][name]
        assert {k: v for k, v in fa.items() if k != "std"} == {k: v for k, v in fb.items() if k != "std"}
        assert fa["std"] == pytest.approx(fb["std"], rel=1e-14)
    with pytest.raises(ValueError, match="read back without its sample"):
        back.update("train", x, NAMES)
    with pytest.raises(ValueError, match="read back without its sample"):
        back.merge(DatasetStats(seed=5).update("train", x, NAMES))
    # a split the summary does not have can still be merged in
    back.merge(DatasetStats(seed=6).update("test", x, NAMES))
    assert back.chips == {"train": 20, "validation": 5, "test": 20}


def test_feature_names_must_agree():
    x = batches(13, [2])[0]
    a = DatasetStats(seed=1).update("train", x, NAMES)
    with pytest.raises(ValueError, match="has features"):
        a.update("train", x, ["B04", "B08", "VH"])
    with pytest.raises(ValueError, match="do not match 2 feature names"):
        a.update("train", x, ["B04", "B08"])
    with pytest.raises(ValueError, match="has features"):
        a.merge(DatasetStats(seed=2).update("train", x, ["B04", "VV", "B08"]))


def test_feature_stats_alone():
    rng = np.random.default_rng(14)
    v = rng.normal(5.0, 2.0, 1_200_000).astype(np.float32)  # more than one chunk
    fs = FeatureStats().update(v[:700_000])
    fs.merge(FeatureStats().update(v[700_000:]))
    ref = v.astype(np.float64)
    assert fs.count == ref.size and fs.mean == pytest.approx(ref.mean(), rel=1e-12)
    assert fs.std == pytest.approx(ref.std(), rel=1e-9)
    assert FeatureStats.from_dict(fs.to_dict()).std == pytest.approx(fs.std, rel=1e-15)


# --------------------------------------------------------------------------------------------------
# Labels


def test_label_counts_for_each_task():
    s = DatasetStats(seed=0)
    s.update_labels("train", np.array([0, 1, 1, 2, 1]))
    s.update_labels("train", np.array([2, 2]))
    s.update_labels("validation", np.array(["ship", "iceberg", "ship"]))
    s.update_labels("test", np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0]]))  # multilabel, inferred from 2-D
    s.update_labels("seg", np.array([[[0, 0], [1, 255]], [[2, 2], [255, 1]]]), ignore_index=255)
    d = s.to_dict()["splits"]
    assert d["train"]["labels"] == {"task": "classification", "keys": "index", "samples": 7,
                                    "counts": {"0": 1, "1": 3, "2": 3}}
    assert d["validation"]["labels"]["counts"] == {"iceberg": 1, "ship": 2}
    assert d["validation"]["labels"]["keys"] == "name"
    assert d["test"]["labels"] == {"task": "multilabel", "keys": "index", "samples": 3,
                                   "counts": {"0": 2, "1": 1, "2": 1}, "unlabelled": 1, "width": 3}
    assert d["seg"]["labels"] == {"task": "segmentation", "keys": "index", "samples": 2,
                                  "counts": {"0": 2, "1": 2, "2": 2}, "pixels": 6, "ignored": 2}
    for dtype in (np.uint8, np.uint16):  # class maps as the pipeline has them (counted in slices): same result
        masks = np.array([[[0, 0], [1, 255]], [[2, 2], [255, 1]]], dtype=dtype)
        small = DatasetStats(seed=0).update_labels("seg", masks, ignore_index=255).to_dict()["splits"]["seg"]
        assert small["labels"] == d["seg"]["labels"], dtype


def test_label_counts_merge_and_refuse_mixtures():
    a = DatasetStats(seed=1).update_labels("train", np.array([0, 0, 1]))
    b = DatasetStats(seed=2).update_labels("train", np.array([1, 3]))
    assert a.merge(b).labels["train"].counts == {"0": 2, "1": 2, "3": 1}
    with pytest.raises(ValueError, match="classification labels"):
        a.update_labels("train", np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="labels given as class names after class indices"):
        LabelCounts("classification").update(np.array([0, 1])).update(np.array(["a"]))
    with pytest.raises(ValueError, match="0/1"):
        LabelCounts("multilabel").update(np.array([[0, 2]]))
    with pytest.raises(ValueError, match="integers"):
        LabelCounts("classification").update(np.array([0.5]))


# --------------------------------------------------------------------------------------------------
# For training


def test_normalization_from_the_train_split():
    chunks = batches(15, [40])
    x = chunks[0].copy()
    x[:, 2] = 3.0  # a constant channel
    s = DatasetStats(seed=0).update("train", x, NAMES).update("test", x[:4] + 1, NAMES)
    mean, std = normalization(s.to_dict())
    assert mean.dtype == std.dtype == np.float32 and mean.shape == (3,)
    ref = reference([x])
    np.testing.assert_allclose(mean[:2], [ref[0].mean(), ref[1].mean()], rtol=1e-6)
    np.testing.assert_allclose(std[:2], [ref[0].std(), ref[1].std()], rtol=1e-6)
    assert mean[2] == 3.0 and std[2] == 1.0
    m2, s2 = normalization(s, names=["VV", "B04"])
    assert m2.tolist() == [mean[2], mean[0]] and s2.tolist() == [std[2], std[0]]
    with pytest.raises(KeyError, match="no statistics for split 'validation'"):
        normalization(s.to_dict(), split="validation")
    with pytest.raises(KeyError, match="NDVI"):
        normalization(s.to_dict(), names=["NDVI"])


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", ">f4", "uint16", "int16", "int32", "bool"])
def test_the_moment_pass_matches_numpy_for_every_value_type(dtype):
    """Every value type the pipeline may hand over: the same counts, extremes, out-of-range counts and
    float64 moments as numpy on a float64 copy."""
    rng = np.random.default_rng(5)
    x = rng.normal(300.0, 40.0, (3, 2, 33, 31))  # rows longer than a block, not a multiple of it
    if np.dtype(dtype).kind == "f":
        x[0, 0, :3] = np.nan
        x[1, 1, 4, 4] = np.inf
        x[2, 0, 5, 5] = -np.inf
    x = x.astype(dtype)
    stats = DatasetStats(seed=0, ranges={"a": (250.0, 350.0)}).update("train", x, ["a", "b"])
    for i, name in enumerate(["a", "b"]):
        v = x[:, i].astype(np.float64).ravel()
        good = v[np.isfinite(v)]
        fs = stats.features["train"][name]
        assert (fs.count, fs.nan_count) == (good.size, v.size - good.size), name
        assert (fs.min, fs.max) == (good.min(), good.max()), name
        assert fs.mean == pytest.approx(good.mean(), rel=1e-14), name
        assert fs.std == pytest.approx(good.std(), rel=1e-13), name
        if name == "a":
            assert (fs.below, fs.above) == (np.count_nonzero(good < 250.0), np.count_nonzero(good > 350.0))


@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 4, 5, 6], [5, 1, 6], [3], [], [2, 2, 0]])
def test_chosen_chips_of_a_batch_count_as_their_gather(rows: list[int]):
    """update(rows=...) adds the chosen chips as if they had been gathered first: the same moments,
    range counts and sample (the same draws), for any order, repeats and none."""
    x = batches(4, [7])[0]
    x[1, 0, 2, :] = np.nan
    x[5, 2, 0, 0] = np.inf
    kwargs = {"ranges": {"B04": (0.0, 0.2)}, "sample_size": 300}
    a = DatasetStats(9, **kwargs)
    b = DatasetStats(9, **kwargs)
    for _ in range(2):  # the second update shifts by the running mean
        a.update("train", x, NAMES, rows=np.asarray(rows, dtype=np.int64))
        b.update("train", x[np.asarray(rows, dtype=np.intp)], NAMES)
    assert a.to_dict() == b.to_dict()
    np.testing.assert_array_equal(a.samples["train"].values, b.samples["train"].values)


def test_chosen_chips_must_be_indices_of_the_batch():
    x = batches(4, [3])[0]
    for bad, match in (([3], r"rows: indices must be in \[0, 3\)"), ([-1], r"rows: indices must be in"),
                       ([[0, 1]], "rows: expected a 1-d array"), ([0.5], "rows: expected a 1-d array")):
        with pytest.raises(ValueError, match=match):
            DatasetStats(1).update("train", x, NAMES, rows=bad)
