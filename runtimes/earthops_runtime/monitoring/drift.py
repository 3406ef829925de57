"""Drift scores of a window against the reference (pure functions over a :class:`WindowSketch`).

* **PSI** (population stability index) per band over the reference's K+2 cells (below, 64 bins,
  above): ``sum((q - p) * ln(q / p))``. Small-count correction: the window's counts get half a count
  in every cell (Jeffreys' pseudo-count; the reference's are smoothed likewise when it is read), so
  an empty cell never gives an infinite score and a thin window is pulled towards "no drift" rather
  than away from it. Usual reading: below 0.1 stable, 0.1-0.25 a warning, above 0.25 drift.
* **Wasserstein-1** between the two binned distributions (values uniform within a bin; the window's
  values beyond the reference's bins at their mean, the reference's at the bin edge since its
  statistics keep no tail mean), divided by the reference's standard deviation: how far, in
  reference standard deviations, the mass moved.
* **Per-chip-mean test** (where a test is wanted): each chip's band mean is one sample (millions of
  correlated pixels would make any difference "significant"); a one-sample t-test of the window's
  chip means against the reference mean, corrected across bands (Benjamini-Yekutieli, valid for the
  correlated bands). Reported beside the scores; the decision is the PSI's.
* **Prediction drift**: PSI of the predicted class shares against the validation split's label
  shares (multilabel: the worst class's two-cell PSI of carrying / not carrying it).

A band (or the predictions) with fewer than ``min_chips`` chips or ``min_values`` values in the window
is "insufficient": no score is given, and a window whose every band is insufficient says so instead
of a score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from earthops_runtime.monitoring.reference import BandReference, Reference
from earthops_runtime.monitoring.sketch import WindowSketch

DEFAULT_THRESHOLD = 0.2
PSEUDO_COUNT = 0.5
#: A window scores a band from this many chips with values in it on (pixels of a chip are correlated:
#: in-distribution ship/iceberg windows of 10 chips pass PSI 0.2 one time in four, of 30 two in 100)
MIN_CHIPS = 30
#: ...and this many values (about 15 per reference bin).
MIN_VALUES = 1000
#: False discovery level of the per-chip-mean tests.
TEST_LEVEL = 0.05


@dataclass(frozen=True)
class Limits:
    """When a window has enough data to score, and the drift threshold (PSI)."""

    threshold: float = DEFAULT_THRESHOLD
    min_chips: int = MIN_CHIPS
    min_values: int = MIN_VALUES


DEFAULT_LIMITS = Limits()


def psi(reference_probs: np.ndarray, counts: np.ndarray, pseudo: float = PSEUDO_COUNT) -> float:
    """Population stability index of window ``counts`` against ``reference_probs`` (same cells)."""
    c = np.asarray(counts, np.float64) + pseudo
    q = c / c.sum()
    p = np.asarray(reference_probs, np.float64)
    return float(np.sum((q - p) * np.log(q / p)))


def _cdf_distance(grid: np.ndarray, f: np.ndarray, g: np.ndarray) -> float:
    """Integral of ``|F - G|`` over ``grid`` for CDFs linear between the grid points."""
    d0, d1 = (f - g)[:-1], (f - g)[1:]
    width = np.diff(grid)
    same = d0 * d1 >= 0
    area = np.where(same, 0.5 * (np.abs(d0) + np.abs(d1)) * width,
                    0.5 * (d0 * d0 + d1 * d1) / np.maximum(np.abs(d0) + np.abs(d1), 1e-300) * width)
    return float(area.sum())


def wasserstein(band: BandReference, counts: np.ndarray, tail_sums: Sequence[float]) -> float:
    """Wasserstein-1 distance between the reference band and the window's binned values (see the
    module docstring), in units of the band's values."""
    counts = np.asarray(counts, np.float64)
    n = counts.sum()
    if n == 0:
        return math.nan
    q = counts / n
    p = band.probs
    e = band.edges
    lo_w = min(tail_sums[0] / counts[0], e[0]) if counts[0] else e[0]
    hi_w = max(tail_sums[1] / counts[-1], e[-1]) if counts[-1] else e[-1]
    # inside [e0, eK] both CDFs are linear between edges; beyond, the reference's tails sit at the
    # edges (its CDF is 0 below e0 and 1 above eK) and the window's at their means
    f_in = p[0] + np.concatenate([[0.0], np.cumsum(p[1:-1])])
    g_in = q[0] + np.concatenate([[0.0], np.cumsum(q[1:-1])])
    return _cdf_distance(e, f_in, g_in) + q[0] * (e[0] - lo_w) + q[-1] * (hi_w - e[-1])


def _t_pvalues(means: np.ndarray, reference_means: np.ndarray, min_chips: int) -> list[float | None]:
    from scipy import stats

    out: list[float | None] = []
    for i, ref in enumerate(reference_means):
        x = means[:, i]
        x = x[np.isfinite(x)]
        if x.size < max(3, min_chips):
            out.append(None)
            continue
        if np.ptp(x) == 0:
            out.append(1.0 if x[0] == ref else 0.0)
            continue
        out.append(float(stats.ttest_1samp(x, ref).pvalue))
    return out


def adjusted(p_values: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Yekutieli adjusted p-values across bands (None: not tested)."""
    from scipy import stats

    tested = [i for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    if tested:
        adj = stats.false_discovery_control([p_values[i] for i in tested], method="by")
        for i, a in zip(tested, np.atleast_1d(adj), strict=True):
            out[i] = float(a)
    return out


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def class_psi(reference: np.ndarray, counts: np.ndarray, counted: int, task: str) -> float:
    """Prediction drift: PSI of the predicted class shares against the reference shares."""
    if task == "multilabel":
        worst = 0.0
        for share, carried in zip(reference, counts, strict=True):
            p = np.clip(np.array([share, 1.0 - share]), 1e-6, None)
            worst = max(worst, psi(p / p.sum(), np.array([carried, counted - carried])))
        return worst
    p = np.clip(reference, 1e-6, None)
    return psi(p / p.sum(), counts)


def assess(reference: Reference, sketch: WindowSketch, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The window's scores (the ``bands``, ``predictions``, ``status``, ``score``, ``band`` and
    ``message`` fields of a report; camelCase, JSON-ready)."""
    means = sketch.chip_mean_values()
    valid_chips = np.isfinite(means).sum(axis=0) if means.size else np.zeros(len(reference.bands), np.int64)
    # the sample holds every chip up to its size; beyond, scale its valid fraction to the window
    scale = sketch.chips / max(means.shape[0], 1)
    p_raw = _t_pvalues(means, np.array([b.mean for b in reference.bands]), limits.min_chips)
    p_adj = adjusted(p_raw)
    bands = []
    for i, band in enumerate(reference.bands):
        m = sketch.moments[i]
        chips = int(round(valid_chips[i] * scale))
        thin = m.count < limits.min_values or chips < limits.min_chips
        score = None if thin else psi(band.probs, sketch.bins[i])
        w = None if thin else wasserstein(band, sketch.bins[i], sketch.tail_sums[i]) / (band.std or 1.0)
        bands.append({
            "name": band.name, "psi": _num(score), "wasserstein": _num(w), "insufficient": thin,
            "drift": bool(score is not None and score > limits.threshold),
            "values": m.count, "nanCount": m.nan_count, "chips": chips,
            "mean": _num(m.mean) if m.count else None, "std": _num(m.std) if m.count else None,
            "referenceMean": band.mean, "referenceStd": band.std,
            "pValue": p_raw[i], "pAdjusted": p_adj[i],
            "significant": bool(p_adj[i] is not None and p_adj[i] < TEST_LEVEL),
            "counts": sketch.bins[i].tolist(),
        })
    predictions: dict[str, Any] | None = None
    if reference.class_shares is not None and sketch.classes.size:
        thin = sketch.chips < limits.min_chips
        total = sketch.classes.sum()
        shares = (sketch.classes / sketch.predicted if reference.task == "multilabel"
                  else sketch.classes / total if total else np.zeros_like(sketch.classes, np.float64))
        score = None if thin else class_psi(reference.class_shares, sketch.classes, sketch.predicted, reference.task)
        predictions = {
            "psi": _num(score), "insufficient": thin, "drift": bool(score is not None and score > limits.threshold),
            "counted": sketch.predicted,
            "shares": {c: float(s) for c, s in zip(reference.classes, shares, strict=True)},
            "referenceShares": {c: float(s) for c, s in zip(reference.classes, reference.class_shares, strict=True)},
        }
    scored = [(b["psi"], b["name"]) for b in bands if b["psi"] is not None]
    if predictions and predictions["psi"] is not None:
        scored.append((predictions["psi"], "predictions"))
    if not scored:
        status, score, worst = "insufficient", None, None
        message = (f"{sketch.chips} chips, {min(b['values'] for b in bands)} values in the thinnest band: a window "
                   f"needs {limits.min_chips} chips and {limits.min_values} values per band")
    else:
        score, worst = max(scored)
        drifted = [b["name"] for b in bands if b["drift"]] + (["predictions"] if predictions and predictions["drift"]
                                                             else [])
        status = "drift" if drifted else "ok"
        message = (f"drift in {', '.join(drifted)}" if drifted else "no drift") + \
            f"; worst {worst} PSI {score:.3g} (threshold {limits.threshold:g})"
    return {"status": status, "score": score, "band": worst, "threshold": limits.threshold, "message": message,
            "bands": bands, "predictions": predictions,
            "limits": {"minChips": limits.min_chips, "minValues": limits.min_values}}


__all__ = ["DEFAULT_LIMITS", "DEFAULT_THRESHOLD", "MIN_CHIPS", "MIN_VALUES", "Limits", "adjusted", "assess", "class_psi", "psi",
           "wasserstein"]
