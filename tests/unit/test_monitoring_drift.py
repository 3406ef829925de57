"""Drift statistics (earthops_runtime.monitoring) on known truth: synthetic Sentinel-1 and Sentinel-2
chips from the project's generators against a training reference built by the dataset statistics.
In-distribution windows give no drift; HV + 3 dB or S2 red x 1.3 flag that band and only it in one
window; 100 in-distribution windows stay under a 5% false-alarm rate; a one-class window flags
prediction drift; a thin window says "insufficient"; sketches merge into the sketch of the union."""

from __future__ import annotations

import json

import numpy as np
import pytest

from earthops_runtime.monitoring.drift import DEFAULT_THRESHOLD, Limits, assess, psi, wasserstein
from earthops_runtime.monitoring.reference import ReferenceError, load_reference, read_reference_document
from earthops_runtime.monitoring.sketch import WindowSketch
from tests.infra.drift_data import S1_CLASSES, probabilities, s1_pool, s2_pool

pytestmark = pytest.mark.unit

WINDOW = 64  # chips per window, sent as requests of 8


def reference_of(pool, classes=S1_CLASSES):
    return load_reference(pool.stats, features=pool.bands, classes=classes, source="test://stats.json")


def window(ref, chips, outputs=None, batch=8):
    sketch = WindowSketch(ref)
    for i in range(0, len(chips), batch):
        sketch.update(chips[i:i + batch], None if outputs is None else outputs[i:i + batch])
    return sketch


def by_band(report):
    return {b["name"]: b for b in report["bands"]}


def test_in_distribution_windows_do_not_drift():
    pool = s1_pool()
    ref = reference_of(pool)
    for start in range(0, 4 * WINDOW, WINDOW):
        chips, labels = pool.chips[start:start + WINDOW], pool.labels[start:start + WINDOW]
        report = assess(ref, window(ref, chips, probabilities(labels)))
        assert report["status"] == "ok", report["message"]
        assert all(b["psi"] < DEFAULT_THRESHOLD for b in report["bands"])
        assert report["predictions"]["psi"] < DEFAULT_THRESHOLD


def test_hv_plus_3_db_flags_hv_only_within_one_window():
    pool = s1_pool()
    ref = reference_of(pool)
    chips = pool.chips[:WINDOW].copy()
    chips[:, 1] += 3.0  # HV + 3 dB; HH and band_avg as they were
    report = assess(ref, window(ref, chips, probabilities(pool.labels[:WINDOW])))
    bands = by_band(report)
    assert report["status"] == "drift" and report["band"] == "HV"
    assert bands["HV"]["drift"] and bands["HV"]["psi"] > 2 * DEFAULT_THRESHOLD
    assert not bands["HH"]["drift"] and not bands["band_avg"]["drift"]
    assert not report["predictions"]["drift"]
    # the other scores agree: HV moved by about 3 dB over its reference spread, the others did not
    assert bands["HV"]["wasserstein"] > 2 * max(bands["HH"]["wasserstein"], bands["band_avg"]["wasserstein"])
    assert bands["HV"]["significant"] and bands["HV"]["mean"] - bands["HV"]["referenceMean"] > 2.0
    assert not bands["HH"]["significant"]


def test_s2_red_scaled_by_1_3_flags_b04_only():
    pool = s2_pool()
    ref = load_reference(pool.stats, features=pool.bands, source="test://s2")
    rng = np.random.default_rng(5)
    chips = pool.chips[rng.choice(len(pool.chips), 2 * WINDOW, replace=False)].copy()
    clean = by_band(assess(ref, window(ref, chips)))
    assert not any(b["drift"] for b in clean.values()), {k: b["psi"] for k, b in clean.items()}
    chips[:, 2] *= 1.3  # B04 (red)
    report = assess(ref, window(ref, chips))
    assert report["band"] == "B04" and report["status"] == "drift"
    assert [name for name, b in by_band(report).items() if b["drift"]] == ["B04"]
    assert report["predictions"] is None  # no labels in this reference: no prediction drift to score


def test_false_alarm_rate_over_100_in_distribution_windows_is_at_most_5_percent():
    pool = s1_pool()
    ref = reference_of(pool)
    rng = np.random.default_rng(2026)
    alarms = 0
    for _ in range(100):
        pick = rng.choice(len(pool.chips), WINDOW, replace=False)
        report = assess(ref, window(ref, pool.chips[pick], probabilities(pool.labels[pick]), batch=WINDOW))
        alarms += report["status"] == "drift"
    assert alarms <= 5


def test_one_class_window_flags_prediction_drift_only():
    pool = s1_pool()
    ref = reference_of(pool)
    chips = pool.chips[:WINDOW]
    report = assess(ref, window(ref, chips, probabilities(np.zeros(WINDOW, np.int64))))
    assert report["predictions"]["drift"] and report["predictions"]["shares"] == {"ship": 1.0, "iceberg": 0.0}
    assert report["predictions"]["referenceShares"]["ship"] == pytest.approx(0.5, abs=0.1)
    assert not any(b["drift"] for b in report["bands"])
    assert report["status"] == "drift" and report["band"] == "predictions"


def test_thin_window_is_insufficient_data_not_a_score():
    pool = s1_pool()
    ref = reference_of(pool)
    report = assess(ref, window(ref, pool.chips[:5], probabilities(pool.labels[:5])))
    assert report["status"] == "insufficient" and report["score"] is None
    assert all(b["psi"] is None and b["insufficient"] for b in report["bands"])
    assert report["predictions"]["insufficient"] and report["predictions"]["psi"] is None
    assert "5 chips" in report["message"] and "30 chips" in report["message"]
    # a band that is nodata in most chips is insufficient on its own, the others are scored
    chips = pool.chips[:WINDOW].copy()
    chips[5:, 2] = np.nan
    bands = by_band(assess(ref, window(ref, chips)))
    assert bands["band_avg"]["insufficient"] and bands["band_avg"]["psi"] is None
    assert bands["HH"]["psi"] is not None and bands["band_avg"]["nanCount"] == (WINDOW - 5) * 75 * 75


def test_sketch_merge_is_the_sketch_of_the_union():
    pool = s1_pool()
    ref = reference_of(pool)
    chips, out = pool.chips[:96], probabilities(pool.labels[:96])
    chips = chips.copy()
    chips[3, 0, :10] = np.nan
    whole = window(ref, chips, out)
    parts = [window(ref, chips[a:b], out[a:b]) for a, b in ((0, 40), (40, 48), (48, 96))]
    merged = parts[2].merge(parts[0]).merge(parts[1])
    assert merged.requests == whole.requests and merged.chips == whole.chips
    np.testing.assert_array_equal(merged.bins, whole.bins)
    np.testing.assert_allclose(merged.tail_sums, whole.tail_sums, rtol=1e-12)
    np.testing.assert_array_equal(merged.classes, whole.classes)
    for a, b in zip(merged.moments, whole.moments, strict=True):
        assert (a.count, a.nan_count, a.min, a.max) == (b.count, b.nan_count, b.min, b.max)
        assert a.mean == pytest.approx(b.mean, rel=1e-12) and a.m2 == pytest.approx(b.m2, rel=1e-9)
    rows = lambda s: sorted(map(tuple, np.nan_to_num(s.chip_mean_values(), nan=-999).round(4).tolist()))  # noqa: E731
    assert rows(merged) == rows(whole)
    a, b = assess(ref, merged), assess(ref, whole)
    assert [x["psi"] for x in a["bands"]] == pytest.approx([x["psi"] for x in b["bands"]])
    # a window read back from its report (another replica's) merges the same way
    again = WindowSketch.from_dict(json.loads(json.dumps(parts[0].to_dict())), ref)
    np.testing.assert_array_equal(again.bins, parts[0].bins)
    with pytest.raises(ValueError, match="different references"):
        whole.merge(WindowSketch(reference_of(s2_pool(), classes=())))


def test_psi_and_wasserstein_on_simple_cases():
    p = np.full(4, 0.25)
    assert psi(p, np.array([1000, 1000, 1000, 1000])) == pytest.approx(0.0, abs=1e-9)
    assert psi(p, np.array([4000, 0, 0, 0])) > 2.0  # an empty cell is finite thanks to the pseudo-count
    doc = {"splits": {"train": {"features": {"x": {
        "count": 1000, "mean": 0.5, "std": 0.2887, "sampled": 1000,
        "histogram": {"edges": np.linspace(0, 1, 11).tolist(), "counts": [100] * 10, "below": 0, "above": 0}}}}}}
    band = load_reference(doc, features=["x"], source="t").bands[0]
    same = np.array([0, *[100] * 10, 0])
    assert wasserstein(band, same, (0.0, 0.0)) == pytest.approx(0.0, abs=1e-3)
    # everything moved one bin (0.1) to the right: W1 = 0.1 up to the uniform-in-bin approximation
    moved = np.array([0, 0, *[100] * 9, 100])
    assert wasserstein(band, moved, (0.0, 100 * 1.05)) == pytest.approx(0.1, abs=0.01)


def test_reference_errors_name_the_band_and_the_reference(tmp_path):
    pool = s1_pool()
    with pytest.raises(ReferenceError, match=r"test://r: split 'train' has no statistics for band 'VV'.*bands there: "
                                             r"HH, HV, band_avg") as info:
        load_reference(pool.stats, features=["HH", "VV"], source="test://r")
    assert info.value.reason == "BandNotInReference"
    with pytest.raises(ReferenceError, match="no statistics for split 'train'; splits: test"):
        load_reference({"splits": {"test": {}}}, features=["HH"], source="s")
    missing = tmp_path / "datasets" / "default" / "gone" / "g1-x"
    with pytest.raises(ReferenceError, match=f"reference {missing}/stats.json: not found") as info:
        read_reference_document(str(missing))
    assert info.value.reason == "ReferenceNotFound" and not missing.exists()
    (tmp_path / "stats.json").write_text(json.dumps(pool.stats))
    assert read_reference_document(f"file://{tmp_path}")["splits"].keys() == pool.stats["splits"].keys()
    assert read_reference_document(str(tmp_path / "stats.json"))["version"] == 1


def test_limits_are_the_callers():
    pool = s1_pool()
    ref = reference_of(pool)
    report = assess(ref, window(ref, pool.chips[:12]), Limits(min_chips=10, min_values=100))
    assert report["status"] in ("ok", "drift") and report["limits"] == {"minChips": 10, "minValues": 100}
