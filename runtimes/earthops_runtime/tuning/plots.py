"""PNG plots of an experiment (matplotlib, Agg backend): learning curves and parameter importance."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from earthops_runtime.tuning.report import TrialRecord


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def learning_curves(records: Sequence[TrialRecord], metric: str, epochs: int, *, best_id: str | None = None,
                    title: str = "") -> bytes:
    """The objective per epoch, one line per trial; stopped trials end in an x, failed ones are dashed,
    the best trial is drawn thick."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    marked = {"stopped": False, "failed": False}
    for r in records:
        pts = [(int(h.get("epoch", i + 1)), float(h[metric])) for i, h in enumerate(r.history)
               if h.get(metric) is not None]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        state = r.state(epochs)
        style = {"linewidth": 2.8 if r.id == best_id else 1.0, "alpha": 1.0 if r.id == best_id else 0.7,
                 "linestyle": "--" if state == "failed" else "-"}
        (line,) = ax.plot(xs, ys, marker=".", label=f"{r.id} (best)" if r.id == best_id else None, **style)
        if state in ("stopped", "failed"):
            ax.plot([xs[-1]], [ys[-1]], marker="x", markersize=9, color=line.get_color(), linestyle="none",
                    label=None if marked[state] else f"{state} early")
            marked[state] = True
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(title or f"learning curves ({metric})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    return _png(fig, plt)


def parameter_importance(scores: Mapping[str, Mapping[str, Any]], metric: str) -> bytes:
    """Horizontal bars of :func:`earthops_runtime.tuning.report.importance` (|Spearman| or eta squared)."""
    plt = _pyplot()
    names = list(scores)
    values = [scores[n]["score"] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * max(1, len(names))), dpi=100)
    bars = ax.barh(names, values, color=["#4c72b0" if scores[n]["method"] == "spearman" else "#dd8452" for n in names])
    for bar, n in zip(bars, names, strict=True):
        s = scores[n]
        text = "n/a" if s["score"] is None else f"{s['score']:.2f}"
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2,
                f"{text} ({'|rho|' if s['method'] == 'spearman' else 'eta2'}, n={s['trials']})", va="center", fontsize=8)
    ax.set_xlim(0, 1.25)
    ax.set_xlabel(f"importance for {metric}: |Spearman rho| (numeric), eta squared (categorical)")
    ax.invert_yaxis()
    ax.set_title("parameter importance")
    return _png(fig, plt)


def _png(fig: Any, plt: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
