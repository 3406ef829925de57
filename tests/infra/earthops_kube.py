"""Helpers of the operator lifecycle tests on the real API server: earthops resources from the
examples, their status, waiting for the operator, and the runtime's ``status.json`` written into the
store by the test (the runtime's part, played without pods)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from earthops.api import KINDS
from earthops.core.store import Store
from tests.infra.operator import running_operator
from tests.infra.peers import KubeRaySimulator
from tests.infra.proc import wait_for

ROOT = Path(__file__).resolve().parents[2]
API = "earthops.dev/v1alpha1"


def apply_example(kube: Any, path: str, ns: str, name: str | None = None, **spec_changes: Any) -> dict[str, Any]:
    """Apply an example manifest (``examples/...``) in ``ns``, renamed and with spec fields replaced."""
    doc = yaml.safe_load((ROOT / path).read_text())
    doc["metadata"].update(namespace=ns, **({"name": name} if name else {}))
    doc["spec"].update(spec_changes)
    return kube.apply(doc)[0]


def post_yaml(kube: Any, namespace: str, kind: str, body: bytes) -> tuple[int, str]:
    """YAML bytes, as they are, to the API server: a dry-run create of ``kind`` with strict field
    validation (``fieldValidation=Strict``, what ``--validate=strict`` asks for). The server reads the
    YAML itself, so a key given twice or bytes that are not UTF-8 reach it (kubectl's client-side
    conversion to JSON would keep the last key and pass the bytes on). Returns (HTTP status, message)."""
    import json

    import urllib3

    url = (f"{kube.url}/apis/{API}/namespaces/{namespace}/{KINDS[kind].plural}?dryRun=All&fieldValidation=Strict")
    reply = urllib3.PoolManager(ca_certs=str(kube.ca_file)).request(
        "POST", url, body=body, headers={"Content-Type": "application/yaml", "Accept": "application/json",
                                         "Authorization": f"Bearer {kube.token}"})
    return reply.status, "" if reply.status < 300 else json.loads(reply.data or b"{}").get("message", "")


def status(kube: Any, kind: str, ns: str, name: str) -> dict[str, Any]:
    return kube.get(API, kind, name, ns).get("status") or {}


def wait_status(kube: Any, kind: str, ns: str, name: str, op: Any, what: str,
                check: Callable[[dict[str, Any]], Any], timeout: float = 30) -> dict[str, Any]:
    """Wait until the resource's status passes ``check`` (failing with the operator's log tail)."""
    wait_for(lambda: check(status(kube, kind, ns, name)), timeout=timeout, what=what, proc=op.proc, log_path=op.log)
    return status(kube, kind, ns, name)


def condition(status_: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status_.get("conditions") or [] if c["type"] == type_)


def write_runtime(store: Store, kind: str, ns: str, name: str, run: str, phase: str, **fields: Any) -> None:
    """Write the run's ``status.json`` as the runtime would (``fields``: progress, results, reason, ...)."""
    doc = {"phase": phase, "runId": run, "generation": int(run[1:].split("-")[0]),
           "updatedAt": datetime.now(UTC).isoformat(), **fields}
    store.write_json(f"{KINDS[kind].store_area}/{ns}/{name}/{run}/status.json", doc)


def succeed_run(kube: Any, store: Store, kind: str, ns: str, name: str, op: Any, **results: Any) -> dict[str, Any]:
    """Play a whole successful run of the resource: its RayJob runs, the runtime reports success with
    ``results``, the RayJob completes; returns the resource's final status."""
    ray = KubeRaySimulator(kube.admin)
    st = wait_status(kube, kind, ns, name, op, f"a RayJob for {kind} {name}", lambda s: s.get("rayJobName"))
    ray.job_running(ns, st["rayJobName"])
    write_runtime(store, kind, ns, name, st["runId"], "Succeeded", results=results)
    ray.job_succeeded(ns, st["rayJobName"])
    return wait_status(kube, kind, ns, name, op, f"{kind} {name} {KINDS[kind].ready_phase}",
                       lambda s: s.get("phase") == KINDS[kind].ready_phase)


@pytest.fixture(name="env")
def operator_env(kube_controller_manager: Any, kube_namespace: str, tmp_path: Path) -> Any:
    """(API client, namespace, store, operator) with the operator running on a local store."""
    store = Store.from_uri((tmp_path / "store").as_uri())
    with running_operator(kube_controller_manager, kube_namespace, tmp_path, store.uri) as op:
        yield kube_controller_manager, kube_namespace, store, op
