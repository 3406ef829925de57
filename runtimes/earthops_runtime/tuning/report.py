"""The experiment's outputs: trials table, per-epoch history, parameter importance, summary (pure).

Built from :class:`TrialRecord` lists (what Ray Tune knows of each trial at the end, or while running),
so the rules are tested without Ray.

Parameter importance: for numeric parameters the absolute Spearman rank correlation between the
parameter and the objective; for categorical parameters eta squared of a one-way ANOVA (between-group
sum of squares over total). Both in [0, 1]; computed over the finished trials (succeeded and stopped)
with each trial's best objective value. A hint of which parameters matter, not a causal analysis
(stopped trials' best values come from fewer epochs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STATES = ("pending", "running", "succeeded", "stopped", "failed")
#: Which of a trial's objective values ranks it: its *last* epoch's, the value of its final checkpoint
#: (the one that gets registered). The trials table has it as ``<metric>_last`` beside ``<metric>_best``
#: (the best epoch's); the status's ``bestMetric`` and the command line's trial table show it.
RANKED_BY = "last"


@dataclass
class TrialRecord:
    """One trial as Ray Tune saw it."""

    id: str
    config: dict[str, Any]
    ray_status: str  # PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict of metrics per epoch reported
    error: str | None = None
    seconds: float = 0.0  # time the trial spent training (sum of its epochs)

    def state(self, epochs: int) -> str:
        """succeeded (all epochs), stopped (ended early: scheduler, target, time budget), failed, running,
        pending."""
        if self.ray_status == "ERROR":
            return "failed"
        if self.ray_status in ("RUNNING", "PAUSED"):
            return "running"
        if self.ray_status == "PENDING":
            return "pending"
        return "succeeded" if self.epochs_run >= epochs else "stopped"

    @property
    def epochs_run(self) -> int:
        return max((int(h.get("epoch", i + 1)) for i, h in enumerate(self.history)), default=0)

    def values(self, metric: str) -> list[float]:
        return [float(h[metric]) for h in self.history if h.get(metric) is not None and not _nan(h[metric])]

    def best(self, metric: str, goal: str) -> float | None:
        vals = self.values(metric)
        if not vals:
            return None
        return min(vals) if goal == "minimize" else max(vals)

    def last(self, metric: str) -> float | None:
        vals = self.values(metric)
        return vals[-1] if vals else None

    def ranked(self, metric: str) -> float | None:
        """The objective value that ranks this trial (:data:`RANKED_BY`)."""
        return self.last(metric)


def _nan(value: Any) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def short_error(text: str | None, limit: int = 500) -> str | None:
    """The exception line of a Ray error text (``RuntimeError: boom``), not the whole traceback."""
    if not text:
        return None
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if ":" in ln and head.replace(".", "").replace("_", "").isalnum() and (
                head.endswith(("Error", "Exception", "Exit", "Interrupt")) or head.endswith("OutOfMemoryError")):
            return ln[:limit]
    return (lines[-1] if lines else str(text))[:limit]


def counts(records: Sequence[TrialRecord], epochs: int, max_trials: int) -> dict[str, int]:
    """Trials by state; trials not created yet count as pending."""
    out = dict.fromkeys(STATES, 0)
    for r in records:
        out[r.state(epochs)] += 1
    out["pending"] += max(0, max_trials - len(records))
    return out


def better(a: float, b: float, goal: str) -> bool:
    return a < b if goal == "minimize" else a > b


def best_trial(records: Sequence[TrialRecord], metric: str, goal: str, *,
               finished_only: bool = False, epochs: int = 0) -> TrialRecord | None:
    """The trial with the best ranked value of the metric (:data:`RANKED_BY`: the value its final
    checkpoint has).

    ``finished_only``: among succeeded and stopped trials (the one whose checkpoint gets registered)."""
    best: tuple[float, TrialRecord] | None = None
    for r in records:
        if finished_only and r.state(epochs) not in ("succeeded", "stopped"):
            continue
        v = r.ranked(metric)
        if v is not None and (best is None or better(v, best[0], goal)):
            best = (v, r)
    return best[1] if best else None


def trials_table(records: Sequence[TrialRecord], parameter_names: Sequence[str], metric: str, goal: str,
                 epochs: int) -> list[dict[str, Any]]:
    """One row per started trial: id, parameters (one column each, named as in the search space), state,
    the objective (best and last), epochs run, duration, error message."""
    rows = []
    for r in records:
        state = r.state(epochs)
        if state == "pending" or (not r.history and r.error is None and state != "running"):
            continue  # never started (cancelled when the experiment ended)
        row: dict[str, Any] = {"trial_id": r.id}
        for name in parameter_names:
            row[name] = r.config.get(name)
        row.update({
            "state": state,
            f"{metric}_best": r.best(metric, goal),
            f"{metric}_last": r.last(metric),
            "epochs": r.epochs_run,
            "duration_s": round(float(r.seconds), 3),
            "error": short_error(r.error),
        })
        rows.append(row)
    return rows


def trials_detail(rows: Sequence[Mapping[str, Any]], parameter_names: Sequence[str], metric: str, goal: str,
                  epochs: int) -> dict[str, Any]:
    """The runtime status's ``detail`` (the command line's trial table and its per-trial lines), made
    from :func:`trials_table`'s rows, the rows ``trials.csv`` is written from: the table on screen and the
    trials file cannot disagree. ``objective`` is each trial's ranked value (:data:`RANKED_BY`)."""
    from earthops_runtime.tuning.space import as_text

    return {
        "objective": {"metric": metric, "goal": goal, "value": RANKED_BY, "column": f"{metric}_{RANKED_BY}",
                      "ranks": True},
        "epochs": epochs,
        "trials": [{
            "id": row["trial_id"], "state": row["state"],
            "parameters": {n: as_text(row[n]) for n in parameter_names if row.get(n) is not None},
            "objective": row[f"{metric}_{RANKED_BY}"], "best": row[f"{metric}_best"],
            "epochs": row["epochs"], "seconds": row["duration_s"], "error": row["error"],
        } for row in rows],
    }


def history_rows(records: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    """One row per (trial, epoch) with every numeric metric reported. A trial that reported an epoch
    twice (population-based training cloned another trial's earlier checkpoint into it) keeps its last
    report of that epoch: the history is the lineage the trial ended with."""
    rows = []
    for r in records:
        by_epoch: dict[int, dict[str, Any]] = {}
        for i, h in enumerate(r.history):
            row: dict[str, Any] = {"trial_id": r.id, "epoch": int(h.get("epoch", i + 1))}
            for k, v in h.items():
                if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    row[k] = float(v)
            by_epoch.pop(row["epoch"], None)  # re-inserted: the order follows the last reports
            by_epoch[row["epoch"]] = row
        rows.extend(sorted(by_epoch.values(), key=lambda row: row["epoch"]))
    return rows


def importance(rows: Sequence[Mapping[str, Any]], parameter_names: Sequence[str], objective: str
               ) -> dict[str, dict[str, Any]]:
    """Importance of each parameter for ``objective`` over the rows (trials) that have it:
    ``{name: {"score": 0..1, "method": "spearman"|"eta2", "trials": n}}``; score None below 3 trials
    or without variation."""
    out: dict[str, dict[str, Any]] = {}
    for name in parameter_names:
        pairs = [(row.get(name), row.get(objective)) for row in rows
                 if row.get(name) is not None and row.get(objective) is not None and not _nan(row.get(objective))]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in pairs)
        method = "spearman" if numeric else "eta2"
        score: float | None = None
        if len(pairs) >= 3:
            xs = [x for x, _ in pairs]
            ys = np.asarray([float(y) for _, y in pairs])
            score = _spearman(np.asarray(xs, dtype=float), ys) if numeric else _eta_squared([str(x) for x in xs], ys)
        out[name] = {"score": score, "method": method, "trials": len(pairs)}
    return out


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    from scipy.stats import spearmanr

    rho = spearmanr(x, y).statistic
    return None if _nan(rho) else float(abs(rho))


def _eta_squared(groups: list[str], y: np.ndarray) -> float | None:
    if len(set(groups)) < 2 or np.ptp(y) == 0:
        return None
    mean = y.mean()
    total = float(((y - mean) ** 2).sum())
    between = 0.0
    for g in set(groups):
        sel = y[[i for i, v in enumerate(groups) if v == g]]
        between += len(sel) * float((sel.mean() - mean) ** 2)
    return between / total


def utilisation(busy_seconds: float, wall_seconds: float, slots: int) -> float | None:
    """Sum of trial busy seconds over (wall seconds x concurrent slots)."""
    if wall_seconds <= 0 or slots <= 0:
        return None
    return round(busy_seconds / (wall_seconds * slots), 4)
