"""A ModelDeployment's drift in its status (pure): ``status.drift`` and the ``Drift`` condition from the
latest monitoring report, and the predictor flags that make the reports.

:func:`with_drift` is applied by :func:`earthops.control.reconcile.inferenceservice.deployment_status`,
the one place a deployment's status is made (the operator reads the report from the store, the
embedded executor too); the meaning of a report is :func:`earthops.core.monitoring.drift_status`.
The event of a change (``Warning DriftDetected``, ``Normal DriftEnded``) is
:func:`earthops.core.monitoring.drift_event` between the old and the new status.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from earthops.api import Resource
from earthops.control.status import now, set_condition
from earthops.core.monitoring import CONDITION, drift_status
from earthops.core.registry import store_of


def monitoring_arguments(resource: Resource[Any, Any], model_uri: str, reference: str | None) -> list[str]:
    """The predictor's drift monitoring flags from ``spec.monitoring`` (none when it is off).

    The reference is ``referenceDatasetRef``'s published run (``reference``), else the served version
    itself (the registry copies its dataset's ``stats.json`` into it); the reports go to
    ``deployments/<ns>/<name>/monitoring/`` of the store the model version is in (the deployment's)."""
    m = resource.spec.monitoring
    if not m.enabled:
        return []
    store = store_of(model_uri)
    argv = ["--monitor-reference", reference or model_uri, "--monitor-window", str(m.window),
            "--monitor-interval", m.interval, "--monitor-threshold", f"{m.threshold:g}",
            "--monitor-store", store, "--monitor-deployment", f"{resource.namespace}/{resource.name}"]
    if m.payload_logging:
        argv.append("--payload-logging")
    return argv


def with_drift(status: dict[str, Any], previous: Mapping[str, Any] | None, report: Mapping[str, Any] | None, *,
               enabled: bool | None, generation: int | None, at: datetime | None = None) -> dict[str, Any]:
    """``status`` with ``drift`` and the ``Drift`` condition of the latest ``report``; a report that
    says nothing new (insufficient data, an error) keeps the previous ``drift``.

    ``enabled`` False (monitoring off): neither. None (the caller did not look): both as ``previous``
    had them. True without a report: the previous condition stays; with none yet, Unknown
    (``NoWindowYet``)."""
    out = dict(status)
    conditions = list(out.get("conditions") or [])
    kept = (previous or {}).get("drift")
    had = any(c.get("type") == CONDITION for c in conditions)
    if enabled is False:
        out.pop("drift", None)
        out["conditions"] = [c for c in conditions if c.get("type") != CONDITION]
        return out
    if enabled is None or (report is None and had):
        if kept is not None:
            out["drift"] = kept
        return out
    outcome = drift_status(report, conditions, model_version=out.get("modelVersion"))
    drift = outcome.drift if outcome.drift is not None else kept
    if drift is not None:
        out["drift"] = drift
    c = outcome.condition
    out["conditions"] = set_condition(conditions, c.type, c.status, c.reason, c.message, at=at or now(),
                                      generation=generation)
    return out


__all__ = ["monitoring_arguments", "with_drift"]
