"""AblationStudy statistics (earthops_runtime.ablation.stats): paired differences, t-intervals, the
paired test, Holm's correction, ranks, permutation summaries and their agreement; checked against
hand-computed values and scipy's own tests."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from earthops_runtime.ablation import stats

pytestmark = pytest.mark.unit


def test_differences_are_paired_by_seed_and_skip_missing_values():
    base = {0: 0.9, 1: 0.8, 2: 0.85, 3: None}
    comp = {1: 0.7, 0: 0.6, 3: 0.5, 4: 0.4}
    assert stats.paired_differences(base, comp) == pytest.approx([-0.3, -0.1])


def test_t_interval_and_p_value_match_scipy():
    diffs = [-0.3, -0.1, -0.25, -0.2]
    lo, hi = stats.t_interval(diffs)
    mean, sem = sum(diffs) / 4, sps.sem(diffs)
    want = sps.t.interval(0.95, 3, loc=mean, scale=sem)
    assert (lo, hi) == pytest.approx(want)
    assert stats.paired_p_value(diffs) == pytest.approx(sps.ttest_1samp(diffs, 0.0).pvalue)
    # the paired test of two samples is the one-sample test of their differences
    a, b = [0.9, 0.8, 0.85, 0.95], [0.6, 0.7, 0.6, 0.75]
    d = [y - x for x, y in zip(a, b, strict=True)]
    assert stats.paired_p_value(d) == pytest.approx(sps.ttest_rel(b, a).pvalue)


def test_one_repeat_gives_no_interval_and_says_so():
    [effect] = stats.effects({0: 0.9}, [("HH", "feature", {0: 0.7})], "maximize")
    assert effect.n == 1 and effect.delta == pytest.approx(-0.2)
    assert effect.ci_low is None and effect.ci_high is None and effect.p_value is None and effect.significant is None
    assert "no confidence interval" in effect.note and effect.rank == 1


def test_identical_differences_give_a_zero_width_interval():
    [same, moved] = stats.effects({0: 1.0, 1: 1.0}, [("noise", "feature", {0: 1.0, 1: 1.0}),
                                                    ("signal", "feature", {0: 0.5, 1: 0.5})], "maximize")
    assert (same.ci_low, same.ci_high, same.p_value, same.significant) == (0.0, 0.0, 1.0, False)
    assert (moved.ci_low, moved.ci_high, moved.p_value, moved.significant) == (-0.5, -0.5, 0.0, True)


def test_holm_steps_down_and_stays_monotone():
    assert stats.holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert stats.holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])
    assert stats.holm([]) == []


def test_importance_follows_the_goal_and_ranks_the_most_harmful_removal_first():
    base = {0: 0.9, 1: 0.92, 2: 0.91}
    comps = [("noise", "feature", {0: 0.9, 1: 0.91, 2: 0.92}),
             ("signal", "feature", {0: 0.5, 1: 0.55, 2: 0.52}),
             ("extra", "layer", {0: 0.88, 1: 0.9, 2: 0.9})]
    effects = {e.component: e for e in stats.effects(base, comps, "maximize")}
    assert effects["signal"].rank == 1 and effects["extra"].rank == 2 and effects["noise"].rank == 3
    assert effects["signal"].significant and effects["signal"].ci_high < 0
    assert not effects["noise"].significant and effects["noise"].ci_low <= 0 <= effects["noise"].ci_high
    # Holm: the p-values are corrected across the three components
    raw = sorted(e.p_value for e in effects.values())
    assert min(e.p_holm for e in effects.values()) == pytest.approx(3 * raw[0])
    # minimising a loss: a higher loss without the component means it matters
    [loss] = stats.effects({0: 0.2, 1: 0.25}, [("HV", "feature", {0: 0.4, 1: 0.45})], "minimize")
    assert loss.importance == pytest.approx(0.2) and loss.delta == pytest.approx(0.2)


def test_a_component_without_pairs_is_unranked():
    [e] = stats.effects({0: 0.9}, [("x", "feature", {1: 0.5})], "maximize")
    assert e.n == 0 and e.delta is None and e.rank is None and "no pair" in e.note


def test_spearman_and_agreement():
    assert stats.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert stats.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert stats.spearman([1, 2], [1, 2]) is None and stats.spearman([1, 1, 1], [1, 2, 3]) is None
    agree = stats.agreement({"a": 0.5, "b": 0.0, "c": 0.1}, {"a": 0.4, "b": 0.01, "c": 0.2})
    assert agree["sameTop"] and agree["topLoco"] == "a" and agree["spearman"] == pytest.approx(1.0)
    summary = stats.permutation_summary({"a": [0.4, 0.6], "b": [0.0, 0.02]})
    assert summary["a"]["rank"] == 1 and summary["a"]["importance"] == pytest.approx(0.5)
    assert math.isclose(summary["a"]["std"], math.sqrt(0.02))
