"""Drift reports of a ModelDeployment as both planes see them: where they live and what they mean.

The predictor's monitor (``earthops_runtime.monitoring``) closes a window every ``monitoring.window``
requests or ``monitoring.interval`` and writes one JSON report per window under
``deployments/<ns>/<name>/monitoring/`` (``<window-id>.json``, a PNG beside it) and the same document
as ``latest-<model version>.json`` and ``latest.json`` (each one atomic write): a canary revision's
reports do not hide the primary's. The control plane reads the served primary version's latest
report (the operator for a cluster, the embedded executor on one machine; ``earthops describe``
reads ``latest.json``) and turns it into ``status.drift``, the ``Drift``
condition and an event, with :func:`drift_status` — pure, JSON only (no numpy), so both executors
and ``earthops describe`` share one reading of a report.

A report's ``status`` is ``ok``, ``drift``, ``insufficient`` (too few values in the window to score:
no score is given) or ``error`` (the monitor could not start: missing reference, a band without
reference statistics; ``message`` names it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from earthops.core.store import Store, StoreError, run_prefix

AREA = "deployments"
FOLDER = "monitoring"
LATEST_NAME = "latest.json"
REPORT_VERSION = 1
CONDITION = "Drift"
#: What a report's ``status`` may say.
STATUSES = ("ok", "drift", "insufficient", "error")
#: The name under which prediction drift (class shares) stands beside the bands.
PREDICTIONS = "predictions"


def monitoring_prefix(namespace: str, name: str) -> str:
    """``deployments/<ns>/<name>/monitoring``."""
    return f"{run_prefix(AREA, namespace, name)}/{FOLDER}"


def report_key(namespace: str, name: str, window_id: str, suffix: str = ".json") -> str:
    """``deployments/<ns>/<name>/monitoring/<window-id>.json`` (or ``.png``, ``.parquet``)."""
    return f"{monitoring_prefix(namespace, name)}/{window_id}{suffix}"


def latest_key(namespace: str, name: str, version: str | None = None) -> str:
    """``.../monitoring/latest.json`` (any version's), or ``latest-<version>.json`` (that model version's:
    a canary's reports do not hide the primary's)."""
    leaf = LATEST_NAME if version is None else f"latest-{str(version).replace('/', '_')}.json"
    return f"{monitoring_prefix(namespace, name)}/{leaf}"


def read_latest(store: Store, namespace: str, name: str, version: str | None = None) -> dict[str, Any] | None:
    """The latest report of a deployment (of model ``version``; a predictor that writes no
    per-version report: ``latest.json``), or None when no window has closed yet."""
    keys = [latest_key(namespace, name, version)] + ([latest_key(namespace, name)] if version is not None else [])
    for key in keys:
        try:
            return store.read_json(key)
        except StoreError:
            if store.exists(key):
                raise
    return None


# --- the decision (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConditionUpdate:
    """The ``Drift`` condition to set (``set_condition(conditions, type, status, reason, message)``)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str


@dataclass(frozen=True)
class Event:
    """A Kubernetes event to emit: ``Warning`` when drift starts, ``Normal`` when it ends."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class DriftOutcome:
    """What a report means for the resource: ``drift`` (``status.drift`` on the wire, None: leave it
    as it is), the condition, and an event when the condition's truth changes."""

    drift: dict[str, Any] | None
    condition: ConditionUpdate
    event: Event | None


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{float(v):.3g}"


def _worst(report: Mapping[str, Any]) -> tuple[str | None, float | None]:
    return report.get("band"), report.get("score")


def _same_version(served: Mapping[str, Any], model_version: str) -> bool:
    """Whether a report's ``model`` (``name``, ``version``) is ``model_version`` (``vN`` or
    ``<model>/vN``); a report that does not say is taken as current."""
    version = served.get("version")
    if version is None:
        return True
    return model_version in (version, f"{served.get('name')}/{version}") or str(version).endswith(f"/{model_version}")


def drift_status(report: Mapping[str, Any] | None, previous_conditions: Sequence[Mapping[str, Any]] = (), *,
                 model_version: str | None = None) -> DriftOutcome:
    """``status.drift``, the ``Drift`` condition and the event for the latest report.

    * no report yet (or one of another model version than ``model_version``, the one served now):
      Drift Unknown (``NoWindowYet``), ``status.drift`` left as it is;
    * ``insufficient``: Unknown (``InsufficientData``), the window's counts in the message;
    * ``error``: Unknown (``MonitoringFailed``) with the monitor's message (the band or dataset);
    * ``ok`` / ``drift``: False (``NoDrift``) / True (``DriftDetected``), the worst band and score.

    ``Warning DriftDetected`` is returned when the condition becomes True, ``Normal DriftEnded``
    when it goes from True to False (an Unknown in between does not end drift)."""
    previous = next((c for c in previous_conditions if c.get("type") == CONDITION), None)
    was = previous.get("status") if previous else None
    status = (report or {}).get("status")
    served = (report or {}).get("model") or {}
    stale = report is not None and model_version is not None and not _same_version(served, model_version)
    if report is None or stale:
        why = (f"the latest report is of model version {(report or {}).get('model', {}).get('version')}, "
               f"not {model_version}" if stale else "no monitoring window has closed yet")
        return DriftOutcome(None, ConditionUpdate(CONDITION, "Unknown", "NoWindowYet", why), None)
    if status not in STATUSES:
        return DriftOutcome(None, ConditionUpdate(CONDITION, "Unknown", "InvalidReport",
                                                  f"report status {status!r}; expected one of {', '.join(STATUSES)}"),
                            None)
    window = report.get("window") or {}
    if status == "error":
        return DriftOutcome(None, ConditionUpdate(CONDITION, "Unknown", "MonitoringFailed",
                                                  str(report.get("message") or "the monitor failed")), None)
    if status == "insufficient":
        msg = (f"window {window.get('id', '?')}: insufficient data ({window.get('chips', 0)} chips, "
               f"{window.get('requests', 0)} requests): {report.get('message') or 'too few values to score'}")
        return DriftOutcome(None, ConditionUpdate(CONDITION, "Unknown", "InsufficientData", msg), None)
    band, score = _worst(report)
    threshold = report.get("threshold")
    detected = status == "drift"
    drift = {"detected": detected, "score": max(0.0, float(score or 0.0)), "band": band}
    drifted = [b["name"] for b in report.get("bands") or [] if b.get("drift")]
    if (report.get("predictions") or {}).get("drift"):
        drifted.append(PREDICTIONS)
    where = f"window {window.get('id', '?')} ({window.get('chips', 0)} chips)"
    if detected:
        msg = (f"{where}: drift in {', '.join(drifted) or band}; worst {band} score {_fmt(score)} "
               f"> threshold {_fmt(threshold)}")
        condition = ConditionUpdate(CONDITION, "True", "DriftDetected", msg)
    else:
        msg = f"{where}: no drift; worst {band} score {_fmt(score)} <= threshold {_fmt(threshold)}"
        condition = ConditionUpdate(CONDITION, "False", "NoDrift", msg)
    return DriftOutcome(drift, condition, transition_event(was, condition))


def transition_event(was: str | None, now: ConditionUpdate | Mapping[str, Any] | None) -> Event | None:
    """The event of a ``Drift`` condition going from status ``was`` to ``now``: ``Warning
    DriftDetected`` when it becomes True, ``Normal DriftEnded`` when it goes from True to False (an
    Unknown in between neither starts nor ends drift)."""
    if now is None:
        return None
    status = now.status if isinstance(now, ConditionUpdate) else now.get("status")
    message = now.message if isinstance(now, ConditionUpdate) else str(now.get("message") or "")
    if status == "True" and was != "True":
        return Event("Warning", "DriftDetected", message)
    if status == "False" and was == "True":
        return Event("Normal", "DriftEnded", message)
    return None


def drift_event(previous: Mapping[str, Any], new: Mapping[str, Any]) -> Event | None:
    """The event between two statuses (what a status patch changed): the new ``Drift`` condition
    against the last known decision, the previous ``status.drift.detected`` (kept through Unknown
    windows), not the previous condition: True, then a quiet replica's or a canary's Unknown, then
    True again is one drift and one ``Warning DriftDetected``."""
    detected = (previous.get("drift") or {}).get("detected")
    was = None if detected is None else ("True" if detected else "False")
    now = next((c for c in new.get("conditions") or [] if c.get("type") == CONDITION), None)
    return transition_event(was, now)


def band_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-band table of a report (and a row for the predictions), worst first, as text cells:
    what ``earthops describe modeldeployment`` prints."""
    rows = []
    for b in report.get("bands") or []:
        rows.append({"band": b["name"], "psi": _fmt(b.get("psi")), "wasserstein": _fmt(b.get("wasserstein")),
                     "mean": _fmt(b.get("mean")), "reference mean": _fmt(b.get("referenceMean")),
                     "p (adjusted)": _fmt(b.get("pAdjusted")),
                     "drift": "insufficient" if b.get("insufficient") else ("yes" if b.get("drift") else "no"),
                     "_order": -(b.get("psi") or 0.0)})
    rows.sort(key=lambda r: r["_order"])
    pred = report.get("predictions")
    if pred:
        rows.append({"band": PREDICTIONS, "psi": _fmt(pred.get("psi")), "wasserstein": "-", "mean": "-",
                     "reference mean": "-", "p (adjusted)": "-",
                     "drift": "insufficient" if pred.get("insufficient") else ("yes" if pred.get("drift") else "no"),
                     "_order": 0})
    for r in rows:
        r.pop("_order")
    return rows


__all__ = ["AREA", "CONDITION", "FOLDER", "LATEST_NAME", "PREDICTIONS", "REPORT_VERSION", "STATUSES",
           "ConditionUpdate", "DriftOutcome", "Event", "band_rows", "drift_event", "drift_status", "latest_key",
           "monitoring_prefix", "read_latest", "report_key", "transition_event"]
