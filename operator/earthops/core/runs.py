"""Run identity, shared by the operator and the embedded executor: one run per spec generation."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from earthops.api import KINDS, Resource
from earthops.core.store import run_prefix


def spec_hash(resource: Resource[Any, Any]) -> str:
    """A short digest of the spec as it is on the wire (defaults filled in)."""
    return hashlib.sha256(json.dumps(resource.spec.wire(), sort_keys=True).encode()).hexdigest()[:12]


def run_id(generation: int, resource: Resource[Any, Any]) -> str:
    """``g<generation>-<spec digest>``: the same generation of the same spec is the same run."""
    return f"g{generation}-{spec_hash(resource)[:8]}"


def run_key(resource: Resource[Any, Any], run: str) -> str:
    """The run folder, relative to the store root: ``<area>/<ns>/<name>/<run-id>``."""
    return f"{run_prefix(KINDS[resource.kind].store_area, resource.namespace, resource.name)}/{run}"
