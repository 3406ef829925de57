"""A window's report in the store: ``<window-id>.json``, a PNG of the worst bands, ``latest.json``.

Layout and meaning are the shared core's (:mod:`earthops.core.monitoring`): the control plane reads
``latest.json``. Every object is one atomic write (:meth:`earthops.core.store.Store.write_bytes`);
``latest.json`` is written last, so it never names a plot that is not there yet.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from earthops.core.monitoring import latest_key, report_key
from earthops.core.store import Store
from earthops_runtime.monitoring.reference import Reference

#: Bands drawn in a window's plot: the worst by PSI.
PLOT_BANDS = 3


def plot_png(reference: Reference, report: Mapping[str, Any], bands: int = PLOT_BANDS) -> bytes:
    """A PNG overlay of the reference's and the window's histograms (as shares of values per bin,
    the cells below and above the bins drawn at the sides) for the ``bands`` worst bands."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    by_name = {b.name: b for b in reference.bands}
    scored = sorted(report["bands"], key=lambda b: -(b.get("psi") or 0.0))[:bands]
    fig = Figure(figsize=(5.0 * len(scored), 3.4), dpi=90)
    for k, row in enumerate(scored):
        ax = fig.add_subplot(1, len(scored), k + 1)
        ref = by_name[row["name"]]
        e = ref.edges
        width = e[1] - e[0]
        centers = np.concatenate([[e[0] - width], (e[:-1] + e[1:]) / 2, [e[-1] + width]])
        counts = np.asarray(row["counts"], np.float64)
        window = counts / counts.sum() if counts.sum() else counts
        ax.step(centers, ref.probs, where="mid", label=f"reference ({reference.split})", color="tab:blue")
        ax.step(centers, window, where="mid", label="window", color="tab:red")
        ax.axvline(e[0], color="grey", lw=0.5, ls=":")
        ax.axvline(e[-1], color="grey", lw=0.5, ls=":")
        psi = row.get("psi")
        ax.set_title(f"{row['name']}: PSI {'-' if psi is None else f'{psi:.3g}'}"
                     f"{' (drift)' if row.get('drift') else ''}", fontsize=10)
        ax.set_xlabel("value (outer steps: below / above the reference's bins)", fontsize=8)
        ax.set_ylabel("share of values", fontsize=8)
        ax.legend(fontsize=8)
    window = report.get("window") or {}
    fig.suptitle(f"window {window.get('id', '')}: {report.get('message', '')}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_report(store: Store, namespace: str, name: str, report: dict[str, Any],
                 reference: Reference | None = None) -> dict[str, Any]:
    """Write the window's report (and its plot, when it has scored bands) and then ``latest.json``;
    returns the report with ``plot`` set to the plot's file name."""
    window_id = report["window"]["id"]
    if reference is not None and any(b.get("psi") is not None for b in report.get("bands") or []):
        store.write_bytes(report_key(namespace, name, window_id, ".png"), plot_png(reference, report))
        report = {**report, "plot": f"{window_id}.png"}
    store.write_json(report_key(namespace, name, window_id), report)
    version = (report.get("model") or {}).get("version")
    if version is not None:  # the version's own latest (the status reads the primary's), then any version's
        store.write_json(latest_key(namespace, name, str(version)), report)
    store.write_json(latest_key(namespace, name), report)
    return report


__all__ = ["PLOT_BANDS", "plot_png", "write_report"]
