"""The study's outputs: analysis of the trials, results table, report (Markdown, HTML), chart, STAC item.

Files at the run key (published atomically):

* ``results.parquet`` / ``results.csv`` — one row per component (the base first): kind, members, pairs,
  mean and std of the objective, base mean, delta, its std, the 95% interval, raw and Holm p-values,
  significance, importance, rank, permutation importance (single features), note;
* ``trials.parquet`` — one row per trial: component, seed, state, objective, epochs, seconds, error,
  and the extras of its last report (per-class metrics, permutation importance);
* ``per_class.parquet`` — classification: each component's mean paired delta of per-class recall and F1;
* ``report.md``, ``report.html`` (self-contained: the chart is embedded as a PNG data URI),
  ``plots/deltas.png`` (the deltas with their 95% intervals as error bars);
* ``item.json`` — a STAC item for the study, linked to the dataset, the tuning experiment and the base model;
* ``base_model/trainer.pt`` — the base trial of the first seed (a trainer checkpoint);
* ``summary.json`` — settings, counts, timings, the ranking and the results the status carries.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np

from earthops_runtime.ablation import stats
from earthops_runtime.ablation.plan import BASE, Component
from earthops_runtime.entrypoint import SUMMARY_FILE

RESULT_COLUMNS = ["component", "kind", "members", "n", "mean", "std", "base_mean", "delta", "delta_std", "ci_low",
                  "ci_high", "p_value", "p_holm", "significant", "importance", "rank", "permutation_importance",
                  "note"]


def _values(rows: Sequence[dict[str, Any]], name: str) -> dict[int, float | None]:
    return {r["seed"]: r["objective"] for r in rows if r["component"] == name and r["state"] == "succeeded"}


def analyse(rows: Sequence[dict[str, Any]], comps: Sequence[Component], spec: Any, info: Any) -> dict[str, Any]:
    """Base statistics, each component's :class:`~.stats.Effect`, permutation importance and its
    agreement with the leave-one-out ranking, per-class deltas, and the most important component."""
    goal = spec.objective.goal
    base = {s: v for s, v in _values(rows, BASE).items() if v is not None}
    others = [c for c in comps if c.name != BASE]
    effects = stats.effects(base, [(c.name, c.kind, _values(rows, c.name)) for c in others], goal)
    drops: dict[str, list[float]] = {f: [] for f in info.features}
    for r in rows:
        if r["component"] == BASE and r["state"] == "succeeded":
            for f in info.features:
                v = r["extras"].get(f"perm/{f}")
                if v is not None and not math.isnan(v):
                    drops[f].append(v)
    permutation = stats.permutation_summary(drops) if any(drops.values()) else {}
    loco_features = {e.component: e.importance for e in effects if e.kind == "feature"}
    agreement = stats.agreement(loco_features, {f: p["importance"] for f, p in permutation.items()}) \
        if permutation else None
    per_class: dict[str, dict[str, float]] = {}
    base_rows = {r["seed"]: r for r in rows if r["component"] == BASE and r["state"] == "succeeded"}
    for c in others:
        deltas: dict[str, list[float]] = {}
        for r in rows:
            if r["component"] != c.name or r["state"] != "succeeded" or r["seed"] not in base_rows:
                continue
            for k, v in r["extras"].items():
                b = base_rows[r["seed"]]["extras"].get(k)
                if k.startswith(("class_recall/", "class_f1/")) and b is not None and not (math.isnan(v) or math.isnan(b)):
                    deltas.setdefault(k, []).append(v - b)
        if deltas:
            per_class[c.name] = {k: float(np.mean(v)) for k, v in sorted(deltas.items())}
    ranked = sorted((e for e in effects if e.rank is not None), key=lambda e: e.rank)  # type: ignore[arg-type, return-value]
    top = None
    if ranked:
        e = ranked[0]
        top = {"component": e.component, "delta": e.delta, "std": e.delta_std or 0.0}
        for key, value in (("ciLow", e.ci_low), ("ciHigh", e.ci_high), ("pValue", e.p_holm),
                           ("significant", e.significant)):
            if value is not None:
                top[key] = value
    values = list(base.values())
    return {
        "base": {"n": len(values), "mean": float(np.mean(values)) if values else None,
                 "std": float(np.std(values, ddof=1)) if len(values) > 1 else None, "values": base},
        "effects": effects, "members": {c.name: list(c.members) for c in comps}, "permutation": permutation,
        "agreement": agreement, "perClass": per_class, "top": top,
        "repeats": spec.repeats, "metric": spec.objective.metric, "goal": goal,
    }


def results_rows(analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """The results table: the base, then the components by rank (unranked last)."""
    base = analysis["base"]
    rows = [{"component": BASE, "kind": "base", "members": "", "n": base["n"], "mean": base["mean"],
             "std": base["std"], "base_mean": base["mean"], "note": "the reference: everything in"}]
    effects = sorted(analysis["effects"], key=lambda e: (e.rank is None, e.rank or 0))
    for e in effects:
        row = e.row()
        row["members"] = ", ".join(analysis["members"].get(e.component, []))
        perm = analysis["permutation"].get(e.component) if e.kind == "feature" else None
        row["permutation_importance"] = perm["importance"] if perm else None
        rows.append(row)
    return [{k: r.get(k) for k in RESULT_COLUMNS} for r in rows]


def _parquet(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> bytes:
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=list(columns) if columns else None)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def write_trials(target: Any, rows: Sequence[dict[str, Any]]) -> None:
    """``trials.parquet``: one row per trial, the extras flattened into columns."""
    flat = []
    for r in rows:
        row = {k: v for k, v in r.items() if k != "extras"}
        row["error"] = (r["error"] or "")[:2000] or None
        row.update(r["extras"])
        flat.append(row)
    target.write_bytes("trials.parquet", _parquet(flat))


def chart(analysis: dict[str, Any], title: str) -> bytes:
    """Horizontal bars of each component's delta with its 95% interval as error bars (none with one
    repeat); significant components drawn dark."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    effects = [e for e in sorted(analysis["effects"], key=lambda e: (e.rank is None, e.rank or 0)) if e.delta is not None]
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.45 * max(1, len(effects))), dpi=100)
    names = [e.component for e in effects][::-1]
    deltas = [e.delta for e in effects][::-1]
    lo = [(e.delta - e.ci_low) if e.ci_low is not None else 0.0 for e in effects][::-1]
    hi = [(e.ci_high - e.delta) if e.ci_high is not None else 0.0 for e in effects][::-1]
    colors = ["#c44e52" if e.significant else "#8c8c8c" for e in effects][::-1]
    ax.barh(names, deltas, xerr=[lo, hi], color=colors, capsize=4, ecolor="#333333")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"delta {analysis['metric']} without the component (component - base)"
                  + ("" if analysis["repeats"] > 1 else "; one repeat: no interval"))
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def ranking(analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """The ranked rows people read (``earthops describe``, the report): rank, component, kind, delta, the
    interval, the corrected p-value, significance, permutation importance."""
    out = []
    for r in results_rows(analysis)[1:]:
        out.append({"rank": r["rank"], "component": r["component"], "kind": r["kind"], "n": r["n"],
                    "delta": r["delta"], "ciLow": r["ci_low"], "ciHigh": r["ci_high"], "pHolm": r["p_holm"],
                    "significant": r["significant"], "permutation": r["permutation_importance"], "note": r["note"]})
    return out


def markdown(resource: Any, analysis: dict[str, Any], summary: dict[str, Any], tuning: dict[str, Any] | None) -> str:
    spec = resource.spec
    base = analysis["base"]
    lines = [f"# Ablation study {resource.namespace}/{resource.name}", "",
             f"Objective: `{analysis['metric']}` ({analysis['goal']}); policy `{spec.policy}`; "
             f"{spec.repeats} seed(s) {summary['seeds']}; model `{spec.model.name}`.", ""]
    if tuning:
        lines += [f"Training settings from TuningExperiment `{tuning['experiment']}`, best trial "
                  f"`{tuning.get('trial')}` (registered model {tuning.get('modelName')} {tuning.get('modelVersion')}).", ""]
    lines += [f"Base: {_num(base['mean'])} ± {_num(base['std'])} (mean ± std over {base['n']} seeds).", ""]
    if spec.repeats < 2:
        lines += [f"**{stats.ONE_REPEAT_NOTE}.**", ""]
    lines += ["Delta = component - base, paired by seed; 95% t-interval of the mean paired difference; "
              "paired t-test, Holm-corrected across components; rank 1 = removal hurts most.", "",
              "| rank | component | kind | pairs | delta | 95% interval | p (Holm) | excludes 0 | permutation |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in ranking(analysis):
        interval = f"[{_num(r['ciLow'])}, {_num(r['ciHigh'])}]" if r["ciLow"] is not None else "n/a"
        lines.append(f"| {_num(r['rank'])} | {r['component']} | {r['kind']} | {r['n']} | {_num(r['delta'])} | {interval} | "
                     f"{_num(r['pHolm'], 3)} | {_num(r['significant'])} | {_num(r['permutation'])} |")
    lines.append("")
    if analysis["permutation"]:
        lines += ["## Permutation importance (base model, no retraining)", "",
                  "| feature | importance | std | rank |", "|---|---|---|---|"]
        for f, p in sorted(analysis["permutation"].items(), key=lambda kv: kv[1]["rank"] or 1e9):
            lines.append(f"| {f} | {_num(p['importance'])} | {_num(p['std'])} | {_num(p['rank'])} |")
        agreement = analysis["agreement"]
        if agreement:
            lines += ["", f"Spearman rank correlation with the leave-one-out importances over "
                          f"{len(agreement['features'])} features: {_num(agreement['spearman'], 3) or 'n/a (fewer than 3)'}; "
                          f"most important by leave-one-out: {agreement['topLoco']}, by permutation: "
                          f"{agreement['topPermutation']}."]
        lines.append("")
    if analysis["perClass"]:
        lines += ["## Per-class deltas (component - base, mean over pairs)", ""]
        keys = sorted({k for v in analysis["perClass"].values() for k in v})
        lines += ["| component | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name, values in analysis["perClass"].items():
            lines.append(f"| {name} | " + " | ".join(_num(values.get(k)) for k in keys) + " |")
        lines.append("")
    c = summary["trials"]
    lines += [f"Trials: {c['trialsDone']} of {c['trialsTotal']} done, {c['trialsFailed']} failed; wall "
              f"{summary['wallSeconds']:.1f} s, trial time {summary['trialSeconds']:.1f} s"
              f"{' (resumed)' if summary['resumed'] else ''}.", "", "![deltas](plots/deltas.png)", ""]
    return "\n".join(lines)


def html_page(title: str, md: str, png: bytes) -> str:
    """A self-contained HTML page of the Markdown report (tables and paragraphs), the chart embedded."""
    data = base64.b64encode(png).decode()
    body: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head, *rest = table
            body.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr></thead><tbody>"
                        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rest)
                        + "</tbody></table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        flush()
        if line.startswith("!["):
            body.append(f'<p><img alt="deltas with 95% intervals" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            text = html.escape(line).replace("**", "")
            body.append(f"<p>{text}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def stac_item(resource: Any, analysis: dict[str, Any], summary: dict[str, Any], *, info: Any,
              tuning: dict[str, Any] | None, store_url: str, created: datetime) -> dict[str, Any]:
    """The study as a STAC item: results and report as assets; links to the dataset (its collection),
    the tuning experiment's run and the base model (the registered model it came from, and the base
    trial's weights)."""
    links = [{"rel": "derived_from", "href": info.collection or info.uri, "type": "application/json",
              "title": f"dataset {resource.spec.dataset_ref.name}"}]
    if tuning:
        links.append({"rel": "via", "href": tuning["run"], "title": f"TuningExperiment {tuning['experiment']} "
                                                                      f"(best trial {tuning.get('trial')})"})
        if tuning.get("model"):
            links.append({"rel": "derived_from", "href": f"{tuning['model'].rstrip('/')}/item.json",
                          "type": "application/json", "title": f"base model {tuning.get('modelName')} "
                                                               f"{tuning.get('modelVersion')}"})
    top = analysis["top"]
    return {
        "type": "Feature", "stac_version": "1.0.0",
        "id": f"{resource.namespace}-{resource.name}-{store_url.rstrip('/').rsplit('/', 1)[-1]}",
        "geometry": None,
        "properties": {
            "datetime": created.isoformat().replace("+00:00", "Z"),
            "title": f"AblationStudy {resource.namespace}/{resource.name}",
            "earthops:kind": "AblationStudy",
            "earthops:objective": {"metric": analysis["metric"], "goal": analysis["goal"]},
            "earthops:policy": resource.spec.policy, "earthops:repeats": resource.spec.repeats,
            "earthops:baseMetric": analysis["base"]["mean"],
            "earthops:mostImportant": top,
            "earthops:ranking": ranking(analysis),
            "mlm:architecture": resource.spec.model.name,
        },
        "links": [*links, {"rel": "self", "href": f"{store_url.rstrip('/')}/item.json", "type": "application/json"}],
        "assets": {
            "report": {"href": "./report.html", "type": "text/html", "roles": ["overview"], "title": "report"},
            "report-markdown": {"href": "./report.md", "type": "text/markdown", "roles": ["overview"]},
            "results": {"href": "./results.parquet", "type": "application/vnd.apache.parquet", "roles": ["data"]},
            "trials": {"href": "./trials.parquet", "type": "application/vnd.apache.parquet", "roles": ["data"]},
            "chart": {"href": "./plots/deltas.png", "type": "image/png", "roles": ["visual"]},
            "base-model": {"href": "./base_model/trainer.pt", "type": "application/octet-stream",
                           "roles": ["mlm:model"], "title": f"base trial, seed {summary['seeds'][0]}"},
        },
    }


def write_outputs(target: Any, resource: Any, analysis: dict[str, Any], rows: Sequence[dict[str, Any]],
                  summary: dict[str, Any], *, info: Any, tuning: dict[str, Any] | None, store_url: str,
                  base_checkpoint: Any, created: datetime) -> None:
    """Write every file of the module docstring into ``target`` (the publishing store)."""
    results = results_rows(analysis)
    target.write_bytes("results.parquet", _parquet(results, RESULT_COLUMNS))
    import pandas as pd

    target.write_bytes("results.csv", pd.DataFrame(results, columns=RESULT_COLUMNS).to_csv(index=False).encode())
    write_trials(target, rows)
    if analysis["perClass"]:
        target.write_bytes("per_class.parquet", _parquet(
            [{"component": name, **values} for name, values in analysis["perClass"].items()]))
    png = chart(analysis, f"{resource.namespace}/{resource.name}: leave-one-out deltas")
    target.write_bytes("plots/deltas.png", png)
    md = markdown(resource, analysis, summary, tuning)
    target.write_bytes("report.md", md.encode())
    target.write_bytes("report.html", html_page(f"Ablation {resource.namespace}/{resource.name}", md, png).encode())
    if base_checkpoint is not None:
        from earthops_runtime.training import CHECKPOINT_FILE

        with base_checkpoint.as_directory() as d:
            from pathlib import Path

            target.write_bytes(f"base_model/{CHECKPOINT_FILE}", (Path(d) / CHECKPOINT_FILE).read_bytes())
    target.write_json("item.json", stac_item(resource, analysis, summary, info=info, tuning=tuning,
                                             store_url=store_url, created=created))
    target.write_json(SUMMARY_FILE, {**summary, "ranking": ranking(analysis), "permutation": analysis["permutation"],
                                     "agreement": analysis["agreement"], "perClass": analysis["perClass"],
                                     "base": {k: v for k, v in analysis["base"].items() if k != "values"}})
