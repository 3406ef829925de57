"""kubectl-like formatting of resources: tables from the CRDs' printer columns, describe, age; what
`earthops run` prints about a run (the trial table, the line that ends a run, plain progress lines)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import yaml

from earthops.api import KINDS
from earthops.api.runtime import RuntimeStatus
from earthops.core import registry


def jsonpath(doc: dict[str, Any], path: str) -> Any:
    """Value at a simple printer-column path (``.status.chips.train``), or None."""
    node: Any = doc
    for part in path.strip(".").split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """kubectl's short age: ``45s``, ``12m``, ``3h``, ``5d``."""
    if not timestamp:
        return "<unknown>"
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _cell(value: Any, type_: str) -> str:
    if value is None or value == "":
        return ""
    if type_ == "number" and isinstance(value, float):
        return f"{value:.4g}"
    if type_ == "boolean":
        return "true" if value else "false"
    return str(value)


def table_rows(docs: list[dict[str, Any]], *, wide: bool = False, namespaces: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows for one kind's resources, columns as in its CRD."""
    if not docs:
        return [], []
    info = KINDS[docs[0]["kind"]]
    cols = [c for c in info.printer_columns if wide or not c.priority]
    header = (["NAMESPACE"] if namespaces else []) + ["NAME"] + [c.name.upper() for c in cols]
    rows = []
    for d in docs:
        row = [d["metadata"].get("namespace", "default")] if namespaces else []
        row.append(d["metadata"]["name"])
        for c in cols:
            v = jsonpath(d, c.json_path)
            row.append(age(v) if c.type == "date" else _cell(v, c.type))
        rows.append(row)
    return header, rows


def plain_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded like kubectl (three spaces apart), no borders: easy to grep and read."""
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["   ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def duration_text(seconds: float | None) -> str:
    """``8.2 s`` (``25 s`` when whole), ``3 min 05 s``, ``1 h 02 min``; empty when unknown."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.0f} s" if float(seconds).is_integer() else f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def run_seconds(status: Mapping[str, Any]) -> float | None:
    """How long the resource's run took: ``startTime`` to ``completionTime`` (whole seconds)."""
    start, end = status.get("startTime"), status.get("completionTime")
    if not start or not end:
        return None
    return (datetime.fromisoformat(end.replace("Z", "+00:00"))
            - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()


def run_line(label: str, status: Mapping[str, Any], *, skipped: bool = False) -> str:
    """The line that ends a resource's run: its phase, how long the run took (start to end, starting
    Ray and the runtime included), its message."""
    phase = status.get("phase", "")
    if skipped:
        return f"{label}: unchanged ({phase} for generation {status.get('observedGeneration', '')})"
    took = duration_text(run_seconds(status))
    message = status.get("message", "")
    return f"{label}: {phase}" + (f", the run took {took}" if took else "") + (f": {message}" if message else "")


def describe(doc: dict[str, Any]) -> str:
    """A ``kubectl describe``-like text of one resource."""
    meta, status = doc["metadata"], doc.get("status") or {}
    out = [
        f"Name:         {meta['name']}",
        f"Namespace:    {meta.get('namespace', 'default')}",
        f"Kind:         {doc['kind']}",
        f"API Version:  {doc['apiVersion']}",
        f"Generation:   {meta.get('generation', '')}",
        f"Created:      {meta.get('creationTimestamp', '')}",
        "Spec:",
        _indent(yaml.safe_dump(doc.get("spec", {}), sort_keys=False).rstrip()),
        "Status:",
        f"  Phase:                {status.get('phase', '')}",
        f"  Progress:             {status.get('progress', '')}",
        f"  Message:              {status.get('message', '')}",
        f"  Observed Generation:  {status.get('observedGeneration', '')}",
        f"  Run:                  {status.get('runId', '')}",
        f"  Started:              {status.get('startTime', '')}",
        f"  Completed:            {status.get('completionTime', '')}",
        f"  Run Duration:         {duration_text(run_seconds(status))}",
        f"  Results:              {status.get('results', '')}",
    ]
    chips = status.get("chips")
    if isinstance(chips, dict):
        splits = ", ".join(f"{split} {chips.get(split, 0)}" for split in ("train", "validation", "test"))
        total = chips.get("total", sum(chips.get(split, 0) for split in ("train", "validation", "test")))
        out.append(f"  Chips:                {total} ({splits})")
    extra = {k: v for k, v in status.items() if k not in {"phase", "progress", "message", "observedGeneration", "runId",
                                                             "results", "conditions", "kopf", "startTime",
                                                             "completionTime", "chips"}}
    if extra:
        out.append(_indent(yaml.safe_dump(extra, sort_keys=False).rstrip()))
    conditions = status.get("conditions") or []
    out.append("Conditions:")
    if conditions:
        header = ["Type", "Status", "Reason", "Last Transition", "Message"]
        rows = [[c["type"], c["status"], c.get("reason", ""), c.get("lastTransitionTime", ""), c.get("message", "")]
                for c in conditions]
        out.append(_indent(plain_table(header, rows)))
    else:
        out.append("  <none>")
    return "\n".join(out)


def _indent(text: str, by: int = 2) -> str:
    return "\n".join(" " * by + line for line in text.splitlines())


# --- what `earthops run` prints --------------------------------------------------------------------

#: Trial states that are final: each gets one line when it first appears (plain output).
FINISHED = ("succeeded", "stopped", "failed")
#: Plain output prints a progress line when nothing was printed for this long (seconds).
PROGRESS_EVERY_S = 20.0


def _objective(detail: Mapping[str, Any]) -> tuple[str, str, str]:
    """(metric, goal, which value: ``last`` or ``best`` epoch) of a trial detail."""
    o = detail.get("objective") or {}
    return str(o.get("metric", "objective")), str(o.get("goal", "")), str(o.get("value", "last"))


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def trial_table(detail: Mapping[str, Any] | None) -> tuple[list[str], list[list[str]], str] | None:
    """Header, rows and a note of the trial table from a runtime status's ``detail`` (the trials
    table's rows, as ``trials.csv`` has them); None when there are no trials to show. The objective
    column is the value that ranks the trials, and its header says which."""
    trials = (detail or {}).get("trials") or []
    if not trials:
        return None
    metric, goal, value = _objective(detail or {})
    header = ["TRIAL", "STATE", "PARAMETERS", f"{metric} ({value} epoch)".upper(), "EPOCHS", "DURATION"]
    total = (detail or {}).get("epochs")
    rows = [[str(t.get("id", "")), str(t.get("state", "")),
             " ".join(f"{k}={v}" for k, v in (t.get("parameters") or {}).items()), _num(t.get("objective")),
             f"{t.get('epochs', '')}" + (f"/{total}" if total else ""), duration_text(t.get("seconds"))]
            for t in trials]
    column = ((detail or {}).get("objective") or {}).get("column")
    note = (f"{metric} ({goal}): each trial's value at its {value} epoch"
            + (f" ({column} in the report)" if column else "")
            + ("; it ranks the trials" if ((detail or {}).get("objective") or {}).get("ranks") else ""))
    return header, rows, note


def trial_line(trial: Mapping[str, Any], detail: Mapping[str, Any]) -> str:
    """One finished trial in a line: id, state, epochs, duration, parameters, objective (error)."""
    metric, _, value = _objective(detail)
    total = detail.get("epochs")
    params = " ".join(f"{k}={v}" for k, v in (trial.get("parameters") or {}).items())
    line = (f"trial {trial.get('id', '')} {trial.get('state', '')} after {trial.get('epochs', '')}"
            f"{f'/{total}' if total else ''} epochs in {duration_text(trial.get('seconds')) or '?'}: {params}; "
            f"{metric} ({value} epoch) {_num(trial.get('objective')) or 'none'}")
    return line + (f"; error: {trial['error']}" if trial.get("error") else "")


class RunLog:
    """What `earthops run` prints when its output is not a terminal (a CI log, a pipe): plain lines —
    one when a resource starts, one per stage its runtime reports, one per finished trial, and a
    progress line whenever nothing was printed for ``every`` seconds (``clock`` is injectable)."""

    def __init__(self, write: Callable[[str], None], *, every: float = PROGRESS_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.write, self.every, self.clock = write, every, clock
        self.label = ""
        self.started = self.last_line = clock()
        self.stages = 0
        self.shown: set[str] = set()
        self.runtime: RuntimeStatus | None = None

    def _emit(self, line: str) -> None:
        self.write(line)
        self.last_line = self.clock()

    def start(self, label: str) -> None:
        self.label, self.stages, self.shown, self.runtime = label, 0, set(), None
        self.started = self.clock()
        self._emit(f"{label}: started")

    def update(self, runtime: RuntimeStatus | None) -> None:
        """A poll of the running resource (its ``status.json``, None before there is one)."""
        if runtime is not None:
            self.runtime = runtime
            for stage in runtime.stages[self.stages:]:  # each stage once, even one begun and ended between reads
                self._emit(f"{self.label}: {stage}")
            self.stages = max(self.stages, len(runtime.stages))
            detail = runtime.detail or {}
            for trial in detail.get("trials") or []:
                if trial.get("state") in FINISHED and trial.get("id") not in self.shown:
                    self.shown.add(str(trial.get("id")))
                    self._emit(f"  {trial_line(trial, detail)}")
        if self.clock() - self.last_line >= self.every:
            self._emit(self.progress_line())

    def progress_line(self) -> str:
        elapsed = duration_text(self.clock() - self.started)
        r = self.runtime
        if r is None:
            return f"{self.label}: starting, {elapsed} so far"
        p = r.progress
        done = f"{p.done}/{p.total} {p.unit}".strip() if p.total else ""
        return f"{self.label}: {', '.join(x for x in (done, f'{elapsed} so far', r.message) if x)}"


# --- the model registry ------------------------------------------------------------------------------


def dataset_label(uri: str | None) -> str:
    """A short name of a dataset run URI for tables: ``<name>/<run-id>`` of
    ``.../datasets/<ns>/<name>/<run-id>``, else the URI's last two segments."""
    if not uri:
        return ""
    parts = uri.rstrip("/").split("/")
    if "datasets" in parts:
        i = len(parts) - 1 - parts[::-1].index("datasets")
        if len(parts) - i == 4:
            return f"{parts[i + 2]}/{parts[i + 3]}"
    return "/".join(parts[-2:])


def experiment_label(experiment: Mapping[str, Any] | None) -> str:
    """``<name>/<runId>`` of an experiment reference (the namespace is the model's, usually)."""
    if not experiment:
        return ""
    return "/".join(str(experiment[k]) for k in ("name", "runId") if experiment.get(k))


def metrics_text(metrics: Mapping[str, Any]) -> str:
    """``val_accuracy=0.9123 val_loss=0.2`` (4 significant digits)."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def describe_model(item: Mapping[str, Any], *, namespace: str, name: str, version: str, uri: str) -> str:
    """A ``kubectl describe``-like text of a registered version: what it is, what it expects as
    input (bands, shape, normalisation), what it outputs, how good it is and where it came from."""
    import yaml

    props = item.get("properties") or {}
    row = registry.summarize(item, namespace=namespace, name=name, version=version, uri=uri)
    model_input = (props.get("mlm:input") or [{}])[0]
    output = (props.get("mlm:output") or [{}])[0]
    model_asset = (item.get("assets") or {}).get("model") or {}
    lines = [
        f"Name:           {name}",
        f"Namespace:      {namespace}",
        f"Version:        {version}",
        f"URI:            {uri}",
        f"Created:        {row['created'] or ''}",
        f"Architecture:   {row['architecture'] or ''}",
        f"Task:           {row['task']}",
        f"Framework:      {props.get('mlm:framework', '')} {props.get('mlm:framework_version', '')}".rstrip(),
        f"Weights:        {_count(props.get('mlm:total_parameters'))}",
        f"Artifact:       {model_asset.get('href', '')} ({model_asset.get('mlm:artifact_type', '')})",
        f"Dataset:        {row['dataset'] or ''}",
        f"Experiment:     {experiment_label(row['experiment'])}  {row['experiment'].get('uri', '')}".rstrip(),
        *([f"Objective:      {_objective_text(row)}"] if row["objective"] else []),
        f"Metrics:        {metrics_text(row['metrics'])}",
        "Input:",
        f"  Shape:        {(model_input.get('input') or {}).get('shape', '')} "
        f"{(model_input.get('input') or {}).get('dim_order', '')}",
    ]
    scaling = model_input.get("value_scaling") or []
    bands = model_input.get("bands") or []
    if bands:
        scaling = scaling if len(scaling) == len(bands) else [{}] * len(bands)
        table = [[str(b), _number(s.get("mean")), _number(s.get("stddev"))]
                 for b, s in zip(bands, scaling, strict=True)]
        lines.append("  " + plain_table(["BAND", "MEAN", "STD"], table).replace("\n", "\n  "))
    lines.append("Output:")
    lines.append(f"  Shape:        {(output.get('result') or {}).get('shape', '')} "
                 f"{(output.get('result') or {}).get('dim_order', '')}")
    classes = output.get("classification:classes") or []
    if classes:
        named = (f"{c.get('value')}={c.get('title') or c.get('name')}" for c in classes)
        lines.append("  Classes:      " + ", ".join(named))
    # the model's arguments (the tuned ones among them: kernelSize, dropout, ...) and the training settings
    lines.append("Hyperparameters:")
    for title, values in (("Model", props.get("earthops:parameters") or {}),
                          ("Training", props.get("mlm:hyperparameters") or {})):
        lines.append(f"  {title}:" + ("" if values else " <none>"))
        if values:
            lines.append("\n".join("    " + line for line in yaml.safe_dump(values, sort_keys=True).splitlines()))
    return "\n".join(lines)


def _count(value: Any) -> str:
    """``271,554 parameters`` (the model's size), empty when unknown."""
    return f"{value:,} parameters" if isinstance(value, int) else ""


def _objective_text(row: Mapping[str, Any]) -> str:
    """``val_accuracy 0.9958 (maximize, last epoch of trial a1_00003)``: the objective that selected the
    model, its value and which epoch's value it is (the experiment ranks trials by it)."""
    objective = row["objective"]
    metric = objective.get("metric", "")
    value = row["metrics"].get(metric)
    how = ", ".join(x for x in (objective.get("goal"), f"{objective['value']} epoch of trial "
                                f"{row['experiment'].get('trial', '?')}" if objective.get("value") else "") if x)
    return f"{metric} {_num(value) or '?'}" + (f" ({how})" if how else "")


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else "" if value is None else str(value)


def ablation_ranking(summary: Mapping[str, Any]) -> str:
    """An AblationStudy's ranked components (its published ``summary.json``): rank, component, kind,
    pairs, delta to the base with its 95% interval, Holm-corrected p-value, whether the interval
    excludes zero, permutation importance; with the base's objective above and a note under."""
    objective = summary.get("objective") or {}
    base = summary.get("base") or {}
    header = ["RANK", "COMPONENT", "KIND", "PAIRS", "DELTA", "95% INTERVAL", "P (HOLM)", "EXCLUDES 0", "PERMUTATION"]
    rows = []
    for r in summary.get("ranking") or []:
        interval = f"[{_g(r.get('ciLow'))}, {_g(r.get('ciHigh'))}]" if r.get("ciLow") is not None else "n/a"
        excludes = "" if r.get("significant") is None else ("yes" if r["significant"] else "no")
        rows.append([_g(r.get("rank")), str(r.get("component", "")), str(r.get("kind", "")), _g(r.get("n")),
                     _g(r.get("delta")), interval, _g(r.get("pHolm")), excludes, _g(r.get("permutation"))])
    head = (f"Ranked components ({objective.get('metric', '?')}, {objective.get('goal', '?')}; base "
            f"{_g(base.get('mean'))} over {_g(base.get('n'))} seeds):")
    note = ("delta = component - base, paired by seed; rank 1: the removal hurts most"
            + ("; one repeat: no interval or p-value" if summary.get("repeats") == 1 else ""))
    return "\n".join([head, _indent(plain_table(header, rows)), _indent(note)])


def _g(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def drift_table(report: Mapping[str, Any]) -> str:
    """A ModelDeployment's latest drift report (``earthops.core.monitoring``): the window, the verdict
    and the per-band table (PSI, Wasserstein over the reference std, window and reference means, the
    per-chip-mean test adjusted across bands), worst band first, the predictions last."""
    from earthops.core.monitoring import band_rows

    window = report.get("window") or {}
    status = report.get("status")
    if status == "error":
        return f"Drift: monitoring failed: {report.get('message', '')}"
    head = (f"Drift (window {window.get('id', '?')}, {window.get('start', '?')} .. {window.get('end', '?')}, "
            f"{_g(window.get('requests'))} requests, {_g(window.get('chips'))} chips; reference "
            f"{(report.get('reference') or {}).get('uri', '?')}): {report.get('message', status)}")
    rows = band_rows(report)
    if not rows:
        return head
    header = [k.upper() for k in rows[0]]
    return "\n".join([head, _indent(plain_table(header, [list(r.values()) for r in rows]))])

