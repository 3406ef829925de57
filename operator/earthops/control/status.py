"""Status conventions, one module for every kind (Kubernetes API conventions).

- ``phase``: Pending -> Running -> Succeeded | Failed (a ModelDeployment is Ready instead of Succeeded).
- ``conditions``: ``Ready`` on every kind plus kind-specific ones; ``lastTransitionTime`` moves only
  when a condition's status changes, not when its reason or message do.
- ``observedGeneration``: the spec generation the status describes.

:func:`derive` is the one status derivation: both the operator (from a RayJob or InferenceService and
``status.json``) and the embedded executor (from a local run and ``status.json``) call it. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from earthops.api.common import CommonStatus
from earthops.api.resources import KindInfo
from earthops.api.runtime import RuntimeStatus

ExecState = Literal["Pending", "Running", "Succeeded", "Failed"]


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str = "",
    *,
    at: datetime,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """A copy of ``conditions`` with ``type_`` set; its lastTransitionTime only moves if status changed."""
    old = get_condition(conditions, type_)
    moved = old is None or old.get("status") != status
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": _ts(at) if moved else old["lastTransitionTime"],  # type: ignore[index]
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return [cond if c.get("type") == type_ else c for c in conditions] if old else [*conditions, cond]


@dataclass(frozen=True)
class Execution:
    """What the executor knows of a run: a RayJob (cluster) or a local run (embedded)."""

    state: ExecState
    reason: str = ""
    message: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True)
class Blocker:
    """Something the resource waits for (e.g. its dataset), reported as a False condition."""

    condition: str  # e.g. DatasetReady
    reason: str  # e.g. DatasetNotReady
    message: str
    failed: bool = False  # True when waiting is pointless (e.g. the dataset failed)


@dataclass(frozen=True)
class Met:
    """Something the resource waited for that now holds (e.g. its dataset is Ready): a True condition."""

    condition: str  # e.g. DatasetReady
    message: str = ""


@dataclass
class _Outcome:
    phase: str
    reason: str
    message: str
    results: dict[str, Any] = field(default_factory=dict)


def _outcome(info: KindInfo, execution: Execution, runtime: RuntimeStatus | None) -> _Outcome:
    results = dict(runtime.results) if runtime else {}
    if runtime and runtime.phase == "Failed":
        return _Outcome("Failed", runtime.reason or "RunFailed", runtime.message or "the run failed", results)
    if execution.state == "Failed":
        return _Outcome("Failed", execution.reason or "RunFailed", execution.message or "the run failed", results)
    if execution.state == "Succeeded":
        if runtime and runtime.phase == "Succeeded":
            return _Outcome(info.ready_phase, info.ready_phase, runtime.message or "done", results)
        return _Outcome("Failed", "NoResults", "the run ended without publishing its results", results)
    if execution.state == "Running" or (runtime and runtime.phase == "Running"):
        return _Outcome("Running", "Running", (runtime.message if runtime else "") or execution.message, results)
    return _Outcome("Pending", execution.reason or "Pending", execution.message or "waiting to start", results)


def progress_text(runtime: RuntimeStatus | None) -> str:
    if runtime is None:
        return ""
    p = runtime.progress
    unit = f" {p.unit}" if p.unit else ""
    return f"{p.done}/{p.total}{unit}" if p.total is not None else (f"{p.done}{unit}" if p.done else "")


#: Ready reasons of a resource that failed on its input (a spec the data or the model refuses, a
#: referenced resource that failed) rather than while working: ``earthops run`` exits 2 for them.
INPUT_REASONS = ("InvalidSpec",)
INPUT_REASON_SUFFIXES = ("NotReady", "Failed", "Unusable", "NotFound")


def input_reason(reason: str) -> bool:
    """Whether a condition reason says the input is at fault (see :data:`INPUT_REASONS`)."""
    return reason in INPUT_REASONS or reason.endswith(INPUT_REASON_SUFFIXES)


def invalid_input(status: dict[str, Any]) -> bool:
    """Whether a Failed resource status failed on its input (see :data:`INPUT_REASONS`)."""
    ready = get_condition(status.get("conditions") or [], "Ready") or {}
    return status.get("phase") == "Failed" and input_reason(str(ready.get("reason") or ""))


def derive(
    info: KindInfo,
    *,
    generation: int | None,
    previous: dict[str, Any] | None,
    execution: Execution,
    runtime: RuntimeStatus | None = None,
    blockers: tuple[Blocker, ...] = (),
    met: tuple[Met, ...] = (),
    at: datetime | None = None,
) -> dict[str, Any]:
    """The resource status (wire format) from what the executor and the runtime report.

    ``blockers`` set their condition False and hold the resource (Pending, or Failed when waiting is
    pointless); ``met`` set theirs True (reason: the condition type). Conditions neither names keep
    their previous value. A ``status.json`` of another generation is ignored (it belongs to an older
    spec); its ``detail`` is never part of the resource status."""
    at = at or now()
    previous = previous or {}
    if runtime is not None and runtime.generation is not None and generation is not None and runtime.generation != generation:
        runtime = None
    conditions: list[dict[str, Any]] = list(previous.get("conditions") or [])
    for m in met:
        conditions = set_condition(conditions, m.condition, "True", m.condition, m.message, at=at, generation=generation)

    if blockers:
        for b in blockers:
            conditions = set_condition(conditions, b.condition, "False", b.reason, b.message, at=at, generation=generation)
        first = next((b for b in blockers if b.failed), blockers[0])
        outcome = _Outcome("Failed" if first.failed else "Pending", first.reason, first.message)
    else:
        outcome = _outcome(info, execution, runtime)

    done = outcome.phase == info.ready_phase
    conditions = set_condition(
        conditions, "Ready", "True" if done else "False", outcome.reason, outcome.message, at=at, generation=generation
    )
    status: dict[str, Any] = {
        **{k: v for k, v in previous.items() if k in ("runId", "results", "rayJobName")},
        "phase": outcome.phase,
        "conditions": conditions,
        "observedGeneration": generation,
        "message": outcome.message,
        "progress": progress_text(runtime),
    }
    if runtime is not None:
        status["runId"] = runtime.run_id
    if execution.start_time:
        status["startTime"] = _ts(execution.start_time)
    if execution.end_time and outcome.phase in ("Succeeded", "Failed"):
        status["completionTime"] = _ts(execution.end_time)
    unknown = sorted(set(outcome.results) - result_fields(info))
    status.update({k: v for k, v in outcome.results.items() if k not in unknown})
    try:
        if unknown:
            raise ValueError(f"fields {info.kind} status does not have: {', '.join(unknown)} "
                             f"(accepted: {', '.join(sorted(result_fields(info)))})")
        return info.status.model_validate(status).wire()
    except (ValidationError, ValueError) as exc:
        # a runtime that reports fields its kind does not have is a bug in the runtime: say so
        status = {k: v for k, v in status.items() if k not in outcome.results}
        status["phase"] = "Failed"
        bad = ("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
               if isinstance(exc, ValidationError) else str(exc))
        status["message"] = f"the runtime reported an invalid status: {bad}"
        status["conditions"] = set_condition(
            conditions, "Ready", "False", "InvalidRuntimeStatus", status["message"], at=at, generation=generation
        )
        return info.status.model_validate(status).wire()


def result_fields(info: KindInfo) -> set[str]:
    """The status fields (camelCase) a kind's runtime may report in its results: the kind's own, not
    the common ones (phase, conditions, results, ...), which the control plane owns."""
    common = set(CommonStatus.model_fields)
    return {f.alias or name for name, f in info.status.model_fields.items() if name not in common}
