"""The model registry as the control plane reads it: versions and their STAC items, JSON only.

A registered model version is a published (immutable) run folder ``models/<ns>/<model>/<vN>/``
whose ``item.json`` is a STAC item with the ML-Model (``mlm``) extension (written by
``earthops_runtime.registry``, which also writes the weights and the exported program). Everything
the CLI and the operator need — which versions exist, which one ``latest`` is, what each one is —
is in those items, so this module reads JSON through the :class:`~earthops.core.store.Store` and never
imports torch (``earthops get models`` starts fast, the operator stays light).

Versions are ``v1``, ``v2``, ... in registration order; ``latest`` is the highest number (not the
newest publication time: a slow registration of v3 that finishes after v4 must not become latest).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from earthops.api.common import Label, Name
from earthops.core.store import Store, run_prefix

AREA = "models"
ITEM_NAME = "item.json"
COLLECTION_NAME = "collection.json"
LATEST = "latest"
_VERSION = re.compile(r"^v([1-9][0-9]*)$")
_NAME = TypeAdapter(Name)
_NAMESPACE = TypeAdapter(Label)


class RegistryError(LookupError):
    """A model or version is not in the registry, or a name is not acceptable; the message says what
    exists or what is accepted."""


# --- names and versions (pure) ---------------------------------------------------------------------


def check_names(namespace: str, name: str) -> None:
    """Refuse names that are not Kubernetes names: they become store keys and ``ModelRef.model``."""
    for value, adapter, what in ((namespace, _NAMESPACE, "namespace (a DNS-1123 label)"),
                                 (name, _NAME, "model name (a DNS-1123 subdomain name)")):
        try:
            adapter.validate_python(value)
        except ValidationError:
            raise RegistryError(f"{value!r} is not a valid {what}: lower-case letters, digits, '-'") from None


def version_number(version: str) -> int:
    """``"v3"`` -> 3; anything else is refused."""
    match = _VERSION.match(version)
    if not match:
        raise RegistryError(f"version {version!r}: expected v1, v2, ... or {LATEST!r}")
    return int(match.group(1))


def sort_versions(versions: Sequence[str]) -> list[str]:
    """Versions in numeric order (``v2`` before ``v10``); folders that are not versions are left out."""
    return sorted((v for v in versions if _VERSION.match(v)), key=version_number)


def next_version(existing: Sequence[str]) -> str:
    """The version after the highest existing one (``v1`` for a new model). Gaps are never filled:
    a number once seen stays taken, so a version name never means two different models."""
    numbers = [version_number(v) for v in sort_versions(existing)]
    return f"v{max(numbers, default=0) + 1}"


def pick_version(existing: Sequence[str], version: str, *, model: str) -> str:
    """The published version that ``version`` (``vN`` or ``latest``) names, or a :class:`RegistryError`
    listing what exists."""
    ordered = sort_versions(existing)
    if not ordered:
        raise RegistryError(f"model {model!r} has no registered version")
    if version == LATEST:
        return ordered[-1]
    version_number(version)
    if version not in ordered:
        raise RegistryError(f"model {model!r} has no version {version!r}; versions: {', '.join(ordered)}")
    return version


def store_of(version_uri: str) -> str:
    """The store a registry version's URI lies in (``<store>/models/<ns>/<model>/<vN>``)."""
    return version_uri.rsplit(f"/{AREA}/", 1)[0]


def version_key(namespace: str, name: str, version: str) -> str:
    """``models/<ns>/<name>/<vN>``."""
    return f"{run_prefix(AREA, namespace, name)}/{version}"


def ordered_metrics(metrics: Mapping[str, Any], objective: str | None) -> dict[str, Any]:
    """The metrics people read first, first: the objective the model was selected by, then the
    validation metrics of its task (``val_*``), then the rest (training loss, learning rate, timings)."""
    def rank(name: str) -> tuple[int, str]:
        return (0 if name == objective else 1 if name.startswith("val_") else 2, name)

    return {k: metrics[k] for k in sorted(metrics, key=rank)}


def headline_metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics of a :func:`summarize` row that tables show: the objective and validation metrics
    (every metric when there are neither)."""
    objective = (row.get("objective") or {}).get("metric")
    shown = {k: v for k, v in row["metrics"].items() if k == objective or k.startswith("val_")}
    return shown or dict(row["metrics"])


def summarize(item: Mapping[str, Any], *, namespace: str, name: str, version: str, uri: str) -> dict[str, Any]:
    """One row of :func:`list_models` from a version's STAC item (metrics in :func:`ordered_metrics`
    order; ``objective``: ``{metric, goal}`` that selected the model, empty when none did)."""
    props = item.get("properties") or {}
    objective = dict(props.get("earthops:objective") or {})
    return {
        "namespace": namespace,
        "name": name,
        "version": version,
        "uri": uri,
        "created": props.get("datetime"),
        "architecture": props.get("mlm:architecture"),
        "task": props.get("earthops:task") or ", ".join(props.get("mlm:tasks") or []),
        "metrics": ordered_metrics(props.get("earthops:metrics") or {}, objective.get("metric")),
        "objective": objective,
        "dataset": props.get("earthops:dataset"),
        "experiment": dict(props.get("earthops:experiment") or {}),
    }


# --- reading the store -----------------------------------------------------------------------------


def model_names(store: Store, namespace: str) -> list[str]:
    """Models of a namespace that have at least one published version."""
    return [m for m in store.children(f"{AREA}/{namespace}") if versions(store, namespace, m)]


def versions(store: Store, namespace: str, name: str) -> list[str]:
    """Published versions of a model, in numeric order (versions being written are invisible)."""
    return sort_versions(store.runs(run_prefix(AREA, namespace, name)))


def resolve_version(store: Store, namespace: str, name: str, version: str = LATEST) -> str:
    """The published version ``version`` names (``latest``: the highest), or a :class:`RegistryError`
    saying which models or versions exist."""
    check_names(namespace, name)
    found = versions(store, namespace, name)
    if not found:
        known = model_names(store, namespace)
        raise RegistryError(f"no model {name!r} in namespace {namespace!r} of {store.uri}; "
                            f"models: {', '.join(known) if known else '(none)'}")
    return pick_version(found, version, model=f"{namespace}/{name}")


def read_item(store: Store, namespace: str, name: str, version: str = LATEST) -> tuple[str, dict[str, Any]]:
    """``(version, item)`` of a registered model version (``latest`` resolved)."""
    version = resolve_version(store, namespace, name, version)
    return version, store.read_json(f"{version_key(namespace, name, version)}/{ITEM_NAME}")


def list_models(store: Store, namespace: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
    """Every published model version (of ``namespace`` / ``name`` when given), as :func:`summarize`
    rows ordered by namespace, name and version number."""
    rows = []
    for ns in [namespace] if namespace else store.children(AREA):
        for model in [name] if name else store.children(f"{AREA}/{ns}"):
            for version in versions(store, ns, model):
                key = version_key(ns, model, version)
                item = store.read_json(f"{key}/{ITEM_NAME}")
                rows.append(summarize(item, namespace=ns, name=model, version=version, uri=store.url(key)))
    return rows


__all__ = ["AREA", "COLLECTION_NAME", "ITEM_NAME", "LATEST", "RegistryError", "check_names", "list_models",
           "headline_metrics", "model_names", "next_version", "ordered_metrics", "pick_version", "read_item", "resolve_version", "sort_versions", "summarize",
           "version_key", "version_number", "versions"]
