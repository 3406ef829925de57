"""The study's statistics (pure: numpy and scipy, no torch, no Ray).

Every component trial with seed *s* is paired with the base trial of seed *s*; a component's effect is
read from its paired differences ``d_s = component_s - base_s`` (the objective's units):

* ``delta``: the mean of the differences; ``delta_std``: their sample standard deviation;
* a two-sided 95% confidence interval ``delta ± t(0.975, n-1) · sd / √n`` (Student's t, since the
  repeats are few); with one pair no interval exists and none is given (``ci_low``/``ci_high`` None,
  ``note`` says why) rather than a fake one;
* the paired t-test's two-sided p-value of "no effect", then Holm's step-down correction across the
  components of the study (family-wise error at 5%); differences that are all equal (sd 0) give p = 1
  for a zero mean and p = 0 otherwise, and an interval of width zero;
* ``importance``: how much worse the objective is without the component (``-delta`` for a metric to
  maximise, ``delta`` for one to minimise), and ``rank`` 1 for the largest importance;
* ``significant``: the interval excludes zero.

Permutation importance (:func:`permutation_summary`) is the same sign convention over features, and
:func:`spearman` is the rank correlation between it and the leave-one-out importances.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Confidence level of the intervals.
LEVEL = 0.95
ONE_REPEAT_NOTE = "one repeat: no confidence interval or p-value can be given (set repeats >= 2)"


@dataclass(frozen=True)
class Effect:
    """One component's effect, paired by seed against the base."""

    component: str
    kind: str
    n: int
    mean: float | None
    std: float | None
    base_mean: float | None
    delta: float | None
    delta_std: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_holm: float | None
    significant: bool | None
    importance: float | None
    rank: int | None
    note: str = ""

    def row(self) -> dict[str, Any]:
        return asdict(self)


def _clean(values: Mapping[int, float | None]) -> dict[int, float]:
    return {int(s): float(v) for s, v in values.items() if v is not None and not math.isnan(float(v))}


def paired_differences(base: Mapping[int, float | None], component: Mapping[int, float | None]) -> list[float]:
    """``component_s - base_s`` for every seed both have a value for, in seed order."""
    b, c = _clean(base), _clean(component)
    return [c[s] - b[s] for s in sorted(set(b) & set(c))]


def t_interval(diffs: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """The t-based confidence interval of the mean of ``diffs``; None for fewer than two."""
    n = len(diffs)
    if n < 2:
        return None
    from scipy import stats

    a = np.asarray(diffs, dtype=float)
    mean, sd = float(a.mean()), float(a.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def paired_p_value(diffs: Sequence[float]) -> float | None:
    """Two-sided p-value of the paired t-test that the mean difference is zero; None for fewer than two."""
    n = len(diffs)
    if n < 2:
        return None
    a = np.asarray(diffs, dtype=float)
    mean, sd = float(a.mean()), float(a.std(ddof=1))
    if sd == 0.0 or not math.isfinite(sd):
        return 1.0 if mean == 0.0 else 0.0
    from scipy import stats

    t = mean / (sd / math.sqrt(n))
    return float(2 * stats.t.sf(abs(t), n - 1))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and does not count as a test)."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(tested)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for k, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - k) * p))
        out[i] = running
    return out


def importance_of(delta: float | None, goal: str) -> float | None:
    """How much worse the objective gets: ``-delta`` when maximising, ``delta`` when minimising."""
    if delta is None:
        return None
    return -delta if goal == "maximize" else delta


def ranks(values: Sequence[float | None]) -> list[int | None]:
    """1 for the largest value, 2 for the next, ...; None for missing values (ties keep input order)."""
    order = sorted((i for i, v in enumerate(values) if v is not None), key=lambda i: -float(values[i]))  # type: ignore[arg-type]
    out: list[int | None] = [None] * len(values)
    for r, i in enumerate(order, start=1):
        out[i] = r
    return out


def effects(base: Mapping[int, float | None], components: Sequence[tuple[str, str, Mapping[int, float | None]]],
            goal: str, level: float = LEVEL) -> list[Effect]:
    """Each component's :class:`Effect` (``components``: name, kind, {seed: objective}), ranked, with
    Holm-corrected p-values across them; in ``components`` order."""
    b = _clean(base)
    partial: list[dict[str, Any]] = []
    for name, kind, values in components:
        c = _clean(values)
        diffs = paired_differences(b, c)
        n = len(diffs)
        seeds = sorted(set(b) & set(c))
        interval = t_interval(diffs, level)
        mean_d = float(np.mean(diffs)) if diffs else None
        note = ""
        if n == 0:
            note = "no pair of finished trials (base and component of the same seed)"
        elif n == 1:
            note = ONE_REPEAT_NOTE
        partial.append({
            "component": name, "kind": kind, "n": n,
            "mean": float(np.mean([c[s] for s in seeds])) if seeds else None,
            "std": float(np.std([c[s] for s in seeds], ddof=1)) if n > 1 else None,
            "base_mean": float(np.mean([b[s] for s in seeds])) if seeds else None,
            "delta": mean_d,
            "delta_std": float(np.std(diffs, ddof=1)) if n > 1 else None,
            "ci_low": interval[0] if interval else None, "ci_high": interval[1] if interval else None,
            "p_value": paired_p_value(diffs),
            "significant": (interval[0] > 0 or interval[1] < 0) if interval else None,
            "importance": importance_of(mean_d, goal), "note": note,
        })
    adjusted = holm([p["p_value"] for p in partial])
    rank = ranks([p["importance"] for p in partial])
    return [Effect(p_holm=a, rank=r, **p) for p, a, r in zip(partial, adjusted, rank, strict=True)]


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation of two equally long sequences; None for fewer than three pairs or a
    constant sequence."""
    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} and {len(b)} values")
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


def permutation_summary(drops: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float | int | None]]:
    """Per feature: the mean and standard deviation of its importance drops (one per base seed and
    shuffle, already signed so that larger is more important), and its rank."""
    names = list(drops)
    means = [float(np.mean(drops[n])) if len(drops[n]) else None for n in names]
    rank = ranks(means)
    return {n: {"importance": m, "std": float(np.std(drops[n], ddof=1)) if len(drops[n]) > 1 else None,
                "n": len(drops[n]), "rank": r} for n, m, r in zip(names, means, rank, strict=True)}


def agreement(loco: Mapping[str, float | None], permutation: Mapping[str, float | None]) -> dict[str, Any]:
    """The features both methods scored, their Spearman correlation, and whether both rank the same
    feature first."""
    common = [f for f in loco if loco[f] is not None and permutation.get(f) is not None]
    a = [float(loco[f]) for f in common]  # type: ignore[arg-type]
    b = [float(permutation[f]) for f in common]  # type: ignore[arg-type]
    top_loco = max(common, key=lambda f: loco[f]) if common else None  # type: ignore[arg-type, return-value]
    top_perm = max(common, key=lambda f: permutation[f]) if common else None  # type: ignore[arg-type, return-value]
    return {"features": common, "spearman": spearman(a, b), "topLoco": top_loco, "topPermutation": top_perm,
            "sameTop": top_loco is not None and top_loco == top_perm}


__all__ = ["LEVEL", "ONE_REPEAT_NOTE", "Effect", "agreement", "effects", "holm", "importance_of", "paired_differences",
           "paired_p_value", "permutation_summary", "ranks", "spearman", "t_interval"]
