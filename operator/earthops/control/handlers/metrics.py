"""Prometheus metrics of the operator."""

from __future__ import annotations

from prometheus_client import Counter, Info

from earthops import __version__

OPERATOR = Info("earthops_operator", "Version and mode of the earthops operator")
RECONCILES = Counter(
    "earthops_reconcile_total", "Reconciliations by kind and result", ["kind", "result"]
)


def describe_operator(mode: str, namespaces: str) -> None:
    OPERATOR.info({"version": __version__, "mode": mode, "namespaces": namespaces})
