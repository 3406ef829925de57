"""Feature validation (earthops_runtime.data.validation): each check failing and passing, policy
warn vs fail, the report and its summary (the EODataset's status.validation)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from earthops.api.dataset import Validation, ValidationSummary
from earthops_runtime.data.stats import DatasetStats
from earthops_runtime.data.validation import ValidationReport, check_spec, validate
from earthops_runtime.errors import SpecError

pytestmark = pytest.mark.unit

NAMES = ["B04", "B08", "NDVI"]


def dataset(seed: int = 0, *, ranges=None, nan_b08: int = 0, out_of_range: float | None = None,
            labels=None, splits=("train", "validation", "test")) -> dict:
    """Small statistics: reflectances in [0, 1], NDVI in [-1, 1]; options break them."""
    rng = np.random.default_rng(seed)
    stats = DatasetStats(seed=seed, ranges=ranges)
    for k, split in enumerate(splits):
        x = np.empty((20, 3, 8, 8), np.float32)
        x[:, 0] = rng.uniform(0.01, 0.3, (20, 8, 8))
        x[:, 1] = rng.uniform(0.1, 0.6, (20, 8, 8))
        x[:, 2] = (x[:, 1] - x[:, 0]) / (x[:, 1] + x[:, 0])
        if split == "train":
            if nan_b08:
                b08 = x[:, 1].reshape(-1)  # a copy: x[:, 1] is not contiguous
                b08[:nan_b08] = np.nan
                x[:, 1] = b08.reshape(20, 8, 8)
            if out_of_range is not None:
                x[0, 0, 0, :3] = out_of_range
        stats.update(split, x, NAMES)
        if labels is not None:
            stats.update_labels(split, labels[k])
    return stats.to_dict()


def only(report: ValidationReport, check: str, subject: str | None = None):
    found = [c for c in report.checks if c.check == check and (subject is None or c.subject == subject)]
    assert len(found) == 1, [c.to_dict() for c in report.checks]
    return found[0]


# --------------------------------------------------------------------------------------------------
# Band ranges


def test_band_range_passes_within_and_fails_outside_with_the_observed_range():
    rules = {"bandRanges": [{"band": "B04", "min": 0, "max": 1}, {"band": "NDVI", "min": -1, "max": 1}]}
    ok = validate(dataset(), rules=rules)
    assert only(ok, "band-range", "B04").status == "pass" and only(ok, "band-range", "NDVI").status == "pass"
    assert "within [0, 1]" in only(ok, "band-range", "B04").message

    bad = validate(dataset(out_of_range=1.7), rules=rules)
    c = only(bad, "band-range", "B04")
    assert c.status == "fail" and c.rule == "spec.validation.bandRanges[B04]"
    assert c.message.startswith("B04: observed range [")
    assert ", 1.7] is outside the accepted [0, 1]" in c.message
    assert c.details["max"] == pytest.approx(1.7) and c.details["above"] >= 1


def test_band_range_fraction_is_exact_when_counted_against_the_range():
    d = dataset(ranges={"B04": (0.0, 1.0)}, out_of_range=-0.2)
    c = only(validate(d, rules={"bandRanges": [{"band": "B04", "min": 0, "max": 1}]}), "band-range", "B04")
    total = 3 * 20 * 64
    assert c.status == "fail" and c.details["exact"] and c.details["below"] == 3 and c.details["above"] == 0
    assert c.details["fractionOutside"] == 3 / total
    assert c.message.endswith("is outside the accepted [0, 1]: 0.08% of values (3) below 0")
    assert "about" not in c.message and "at most" not in c.message


def test_band_range_fraction_is_estimated_from_the_histogram_otherwise():
    d = dataset()
    c = only(validate(d, rules={"bandRanges": [{"band": "B08", "min": 0.2, "max": 0.5}]}), "band-range", "B08")
    allb08 = 3 * 20 * 64
    assert c.status == "fail" and not c.details["exact"]
    # uniform on [0.1, 0.6]: 20% below 0.2 and 20% above 0.5
    assert c.details["below"] / allb08 == pytest.approx(0.2, abs=0.03)
    assert c.details["above"] / allb08 == pytest.approx(0.2, abs=0.03)
    assert "about 2" in c.message and "below 0.2" in c.message and "above 0.5" in c.message


def test_band_range_for_an_unknown_band_fails_and_check_spec_catches_it_early():
    c = only(validate(dataset(), rules={"bandRanges": [{"band": "B12", "min": 0, "max": 1}]}), "band-range")
    assert c.status == "fail" and "B12: not a feature of the dataset" in c.message
    with pytest.raises(SpecError) as e:
        check_spec({"bandRanges": [{"band": "B12", "min": 0, "max": 1}]}, NAMES)
    assert e.value.field == "spec.validation.bandRanges" and "B12 is not among" in str(e.value)
    check_spec(Validation(band_ranges=[{"band": "NDVI", "min": -1, "max": 1}]), NAMES)


# --------------------------------------------------------------------------------------------------
# NaN fraction


def test_nan_fraction_per_feature_against_max_nan_fraction():
    d = dataset(nan_b08=128)  # 128 of 3840 B08 values: 3.33%
    strict = validate(d, rules={"maxNanFraction": 0.01})
    c = only(strict, "nan", "B08")
    assert c.status == "fail" and c.rule == "spec.validation.maxNanFraction"
    assert c.message == ("B08: 3.33% of values are NaN/nodata (128 of 3,840; train 10%, validation 0%, test 0%); "
                         "at most 1% accepted")
    assert only(strict, "nan", "B04").status == "pass" and only(strict, "nan", "NDVI").status == "pass"
    loose = validate(d, rules={"maxNanFraction": 0.05})
    assert only(loose, "nan", "B08").status == "pass"
    # the default matches chips.maxNodataFraction's default (10%)
    assert only(validate(d), "nan", "B08").status == "pass"
    assert only(validate(dataset(nan_b08=768)), "nan", "B08").status == "fail"  # 20%


# --------------------------------------------------------------------------------------------------
# Labels


def test_class_balance_rarest_class_share():
    labels = [np.array([0] * 18 + [1] * 2), np.array([0] * 19 + [1]), np.array([0] * 19 + [1])]
    d = dataset(labels=labels)  # class 1: 4 of 60 = 6.67%
    fail = only(validate(d, rules={"minClassFraction": 0.1}, classes=["ship", "iceberg"]), "class-balance")
    assert fail.status == "fail" and fail.subject == "iceberg"
    assert fail.message == "1 class below 10% of the chips: 'iceberg' 6.67% (4)"
    ok = only(validate(d, rules={"minClassFraction": 0.05}, classes=["ship", "iceberg"]), "class-balance")
    assert ok.status == "pass" and "'iceberg' has 6.67% of the chips" in ok.message
    # a class named but never seen is the rarest of all
    absent = only(validate(d, rules={"minClassFraction": 0.01}, classes=["ship", "iceberg", "sea-ice"]),
                  "class-balance")
    assert absent.status == "fail" and absent.subject == "sea-ice"
    # no threshold, no check
    assert not [c for c in validate(d, classes=["ship", "iceberg"]).checks if c.check == "class-balance"]


def test_class_balance_for_segmentation_counts_pixels():
    stats = DatasetStats(seed=0)
    stats.update("train", np.zeros((2, 1, 4, 4), np.float32), ["B04"])
    masks = np.zeros((2, 4, 4), int)
    masks[0, 0, 0] = 1  # one pixel of 32
    stats.update_labels("train", masks, task="segmentation")
    c = only(validate(stats.to_dict(), rules={"minClassFraction": 0.05}, classes=["bg", "ship"]), "class-balance")
    assert c.status == "fail" and "of the pixels" in c.message and "'ship' 3.12% (1)" in c.message


def test_label_set_against_allowed_labels():
    labels = [np.array(["ship", "iceberg"] * 10), np.array(["ship"] * 20), np.array(["ship"] * 19 + ["whale"])]
    d = dataset(labels=labels)
    bad = only(validate(d, rules={"allowedLabels": ["ship", "iceberg"]}), "label-set")
    assert bad.status == "fail" and bad.message == "labels outside the allowed set: 'whale' (1)"
    assert bad.details["unknown"] == {"whale": 1}
    ok = only(validate(d, rules={"allowedLabels": ["ship", "iceberg", "whale"]}), "label-set")
    assert ok.status == "pass" and ok.message == "all 3 labels found are allowed"


def test_label_set_maps_indices_through_classes():
    labels = [np.array([0, 1] * 10), np.array([0] * 20), np.array([0] * 19 + [4])]
    d = dataset(labels=labels)
    c = only(validate(d, classes=["ship", "iceberg"]), "label-set")
    assert c.status == "fail" and "class indices 4 have no name in spec.labels.classes (2 classes)" in c.message
    c = only(validate(d, rules={"allowedLabels": ["ship"]}, classes=["ship", "iceberg", "x", "y", "z"]),
             "label-set")
    assert c.status == "fail" and "'iceberg' (10)" in c.message and "'z' (1)" in c.message


def test_label_checks_without_labels_warn():
    report = validate(dataset(), rules={"minClassFraction": 0.1, "allowedLabels": ["a"]})
    assert only(report, "class-balance").status == "warn" and only(report, "label-set").status == "warn"


# --------------------------------------------------------------------------------------------------
# Empty splits


def test_empty_split_fails_for_a_split_the_spec_asks_for():
    d = dataset(splits=("train", "validation"))
    report = validate(d, splits={"train": 0.7, "validation": 0.15, "test": 0.15})
    c = only(report, "empty-split", "test")
    assert c.status == "fail" and c.rule == "spec.split.test"
    assert c.message.startswith("split 'test' has no chips although spec.split.test is 0.15")
    assert only(report, "empty-split", "train").status == "pass"
    # a split the spec gives nothing to is not expected
    report = validate(d, splits={"train": 0.8, "validation": 0.2, "test": 0.0})
    assert [c.subject for c in report.checks if c.check == "empty-split"] == ["train", "validation"]
    assert report.passed


# --------------------------------------------------------------------------------------------------
# Policy, report, summary


def test_policy_fail_fails_the_report_and_warn_records_warnings():
    d = dataset(nan_b08=128, out_of_range=2.0)
    rules = {"bandRanges": [{"band": "B04", "min": 0, "max": 1}], "maxNanFraction": 0.01}
    failing = validate(d, rules={**rules, "policy": "fail"})
    assert not failing.passed
    assert failing.summary() == {"passed": False, "failedChecks": 2, "warnings": 0}
    warning = validate(d, rules=Validation.model_validate({**rules, "policy": "warn"}))
    assert warning.passed
    assert warning.summary() == {"passed": True, "failedChecks": 0, "warnings": 2}
    for c in warning.warnings:
        assert c.severity == "fail" and c.message.endswith("(policy warn: recorded, not failing the dataset)")
    # the summary is the EODataset's status.validation
    status = ValidationSummary.model_validate(failing.summary())
    assert status.failed_checks == 2 and status.passed is False


def test_report_json_and_message():
    d = dataset(nan_b08=128)
    report = validate(d, rules={"maxNanFraction": 0.01})
    doc = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert doc["passed"] is False and doc["policy"] == "fail" and doc["failedChecks"] == 1
    nan_b08 = next(c for c in doc["checks"] if c["check"] == "nan" and c["subject"] == "B08")
    assert nan_b08["status"] == nan_b08["severity"] == "fail"
    assert nan_b08["details"]["bySplit"] == {"train": 0.1, "validation": 0.0, "test": 0.0}
    assert report.message().startswith("validation failed: B08: 3.33% of values are NaN/nodata")
    assert validate(dataset()).message() == f"validation passed ({len(validate(dataset()).checks)} checks)"


def test_all_checks_pass_on_clean_data():
    labels = [np.array([0, 1] * 10)] * 3
    d = dataset(labels=labels, ranges={"B04": (0.0, 1.0)})
    rules = Validation(band_ranges=[{"band": "B04", "min": 0, "max": 1}], max_nan_fraction=0.0,
                       min_class_fraction=0.3, allowed_labels=["ship", "iceberg"])
    report = validate(d, rules=rules, classes=["ship", "iceberg"], splits={"train": 0.6, "validation": 0.2,
                                                                            "test": 0.2})
    assert report.passed and report.summary() == {"passed": True, "failedChecks": 0, "warnings": 0}
    assert {c.check for c in report.checks} == {"empty-split", "band-range", "nan", "class-balance", "label-set"}
