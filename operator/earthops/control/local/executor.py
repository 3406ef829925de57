"""Run resources on this machine: order them by reference, run each kind's runtime entrypoint as a
local process (``python -m earthops_runtime run``, the same command KubeRay runs), follow its
``status.json``, and derive the resource status with the same function the operator uses.

State lives in the store beside the runs: ``<area>/<ns>/<name>/resource.json`` holds the last applied
resource with its generation and status; ``get`` and ``describe`` read it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from earthops.api import KINDS, KindInfo, Resource, parse_resource
from earthops.api.runtime import STATUS_FILE, RuntimeStatus
from earthops.control.reconcile.inferenceservice import (
    Models,
    Observed,
    deployment_status,
    resolve_models,
    store_registry,
)
from earthops.control.reconcile.inputs import Inputs, Lookup, resolve_inputs
from earthops.control.status import Execution, derive
from earthops.core.inputs import input_args
from earthops.core.monitoring import drift_event, read_latest
from earthops.core.runs import run_id as make_run_id
from earthops.core.runs import run_key as make_run_key
from earthops.core.runs import spec_hash
from earthops.core.store import Store, StoreError, run_prefix

RESOURCE_FILE = "resource.json"
#: How often the embedded executor reads a served deployment's latest drift report.
DRIFT_POLL_S = 2.0


class Unsupported(Exception):
    """Some resources cannot run in this version; nothing was run."""


def order(resources: list[Resource[Any, Any]], known: set[tuple[str, str, str]] = frozenset()) -> list[Resource[Any, Any]]:
    """Resources sorted so that every resource comes after the ones it references (stable otherwise).

    A reference must point at a resource in ``resources`` or in ``known`` (already in the store);
    otherwise, or on a cycle, :class:`ValueError` names the resource (and its file), the field that
    holds the reference, the kind it must point at and what was found under that name instead."""
    by_key = {r.key: r for r in resources}
    problems, deps = [], {}
    for r in resources:
        refs = list(KINDS[r.kind].references(r.spec).values())
        for ref in refs:
            key = (ref.kind, r.namespace, ref.name)
            if key not in by_key and key not in known:
                problems.append(_dangling(r, ref, by_key, known))
        deps[r.key] = [(ref.kind, r.namespace, ref.name) for ref in refs if (ref.kind, r.namespace, ref.name) in by_key]
    if problems:
        raise ValueError("\n".join(problems))
    out: list[Resource[Any, Any]] = []
    state: dict[tuple[str, str, str], str] = {}

    def visit(key: tuple[str, str, str], path: list[tuple[str, str, str]]) -> None:
        if state.get(key) == "done":
            return
        if state.get(key) == "visiting":
            cycle = " -> ".join(f"{k[0]} {k[2]}" for k in [*path, key])
            raise ValueError(f"reference cycle: {cycle}")
        state[key] = "visiting"
        for dep in deps[key]:
            visit(dep, [*path, key])
        state[key] = "done"
        out.append(by_key[key])

    for r in resources:
        visit(r.key, [])
    return out


def _dangling(r: Resource[Any, Any], ref: Any, by_key: dict[tuple[str, str, str], Resource[Any, Any]],
              known: set[tuple[str, str, str]]) -> str:
    """What is wrong with a reference to nothing of its kind: where, which field, what was found."""
    others = sorted({k for k in (*by_key, *known) if k[1:] == (r.namespace, ref.name) and k[0] != ref.kind})
    if others:
        found = ", ".join(f'{k[0]} "{k[2]}" ({by_key[k].source or "in the manifests"})' if k in by_key else
                          f'{k[0]} "{k[2]}" (in the store)' for k in others)
        article = "an" if ref.kind[0] in "AEIOU" else "a"
        instead = f"; found {found} instead, but {ref.field} must name {article} {ref.kind}"
    else:
        instead = f"; nothing named {ref.name!r} is in namespace {r.namespace}"
    where = f"{r.source}: " if r.source else ""
    return (f'{where}{r.kind} "{r.name}": {ref.field}: references {ref.kind} {ref.name!r}, which is neither in the '
            f"given manifests nor in the store{instead}")


def stored_resources(store: Store, kinds: Iterable[str] | None = None, namespace: str | None = None) -> list[dict[str, Any]]:
    """Every resource the embedded executor has recorded in the store (wire format, with status)."""
    out = []
    for kind in kinds or KINDS:
        area = KINDS[kind].store_area
        for ns in [namespace] if namespace else store.children(area):
            for name in store.children(f"{area}/{ns}"):
                key = f"{run_prefix(area, ns, name)}/{RESOURCE_FILE}"
                if store.exists(key):
                    out.append(store.read_json(key))
    return out


@dataclass
class Outcome:
    resource: dict[str, Any]
    skipped: bool = False
    #: A served kind's running predictor (:class:`earthops.control.local.serving.LocalServer`), until
    #: :meth:`Executor.stop` stops it.
    server: Any = None


class Executor:
    """Runs resources in embedded mode against one store."""

    def __init__(self, store: Store, *, ray_address: str | None = None, poll_interval: float = 0.5,
                 on_progress: Callable[[dict[str, Any], RuntimeStatus | None], None] | None = None,
                 port: int = 8080):
        self.store = store
        self.ray_address = ray_address
        self.poll_interval = poll_interval
        self.on_progress = on_progress
        #: Where a served kind's predictor listens on 127.0.0.1 (the next ones take the next ports; 0: free ports).
        self.port = port
        self.servers: list[Any] = []
        #: Told of a served resource's drift events (``earthops.core.monitoring.Event``) as the reports come.
        self.on_drift_event: Callable[[Resource[Any, Any], Any], None] | None = None
        self._drift_watch = threading.Event()
        self._state_lock = threading.Lock()

    # --- checks before anything runs ---------------------------------------------------------------

    @staticmethod
    def check_supported(resources: list[Resource[Any, Any]]) -> None:
        missing = sorted({r.kind for r in resources if KINDS[r.kind].runtime is None})
        if missing:
            names = ", ".join(f"{r.kind} {r.namespace}/{r.name}" for r in resources if r.kind in missing)
            raise Unsupported(
                f"this version of earthops cannot run {', '.join(missing)} yet (no runtime is built for "
                f"{'that kind' if len(missing) == 1 else 'those kinds'}); refused before running anything: {names}"
            )

    def plan(self, resources: list[Resource[Any, Any]]) -> list[Resource[Any, Any]]:
        known = {(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]) for d in stored_resources(self.store)}
        return order(resources, known)

    # --- running -----------------------------------------------------------------------------------

    def run_store(self, r: Resource[Any, Any]) -> Store:
        """Where the resource's runs go: its own ``storage.uri`` if it names one, else this store.

        (Embedded mode has no Secrets: S3 credentials come from this process's environment.)"""
        spec = r.spec
        storage = KindInfo.storage(spec)
        if storage is not None and storage.uri and storage.uri.rstrip("/") != self.store.uri:
            return Store.from_uri(storage.uri)
        return self.store

    def _state_key(self, r: Resource[Any, Any]) -> str:
        return f"{run_prefix(KINDS[r.kind].store_area, r.namespace, r.name)}/{RESOURCE_FILE}"

    def _load_state(self, r: Resource[Any, Any]) -> dict[str, Any] | None:
        key = self._state_key(r)
        return self.store.read_json(key) if self.store.exists(key) else None

    def _lookup(self, namespace: str) -> Lookup:
        def lookup(kind: str, name: str) -> dict[str, Any] | None:
            key = f"{run_prefix(KINDS[kind].store_area, namespace, name)}/{RESOURCE_FILE}"
            return (self.store.read_json(key).get("status") or {}) if self.store.exists(key) else None

        return lookup

    def resolve(self, r: Resource[Any, Any]) -> Inputs:
        """The published runs ``r`` references; a reference that is not usable fails ``r`` (a one-shot
        run: nothing else will make it usable)."""
        return resolve_inputs(r, self._lookup(r.namespace), wait=False)

    def apply(self, r: Resource[Any, Any]) -> Outcome:
        """Run one resource (its references must have run). Returns its recorded state."""
        info = KINDS[r.kind]
        previous = self._load_state(r)
        digest = spec_hash(r)
        prev_meta = (previous or {}).get("metadata", {})
        same_spec = previous is not None and previous.get("specHash") == digest
        generation = prev_meta.get("generation", 0) + (0 if same_spec else 1)
        if same_spec and (previous.get("status") or {}).get("phase") == info.ready_phase and info.child == "RayJob":
            return Outcome(previous, skipped=True)  # idempotent: this generation already succeeded

        created = prev_meta.get("creationTimestamp") or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        wire = r.wire()
        wire["metadata"] = {**wire["metadata"], "generation": generation, "creationTimestamp": created}
        wire.pop("status", None)
        prev_status = (previous or {}).get("status") if same_spec else None
        state = {**wire, "specHash": digest}

        if info.child == "InferenceService":
            return self._serve(r, state, prev_status, generation)
        resolved = self.resolve(r)
        if not resolved.ready:
            state["status"] = derive(info, generation=generation, previous=prev_status,
                                     execution=Execution("Pending"), blockers=resolved.blockers, met=resolved.met)
            self.store.write_json(self._state_key(r), state)
            return Outcome(state)

        run_id = make_run_id(generation, r)
        run_key = make_run_key(r, run_id)
        started = datetime.now(UTC)
        state["status"] = derive(info, generation=generation, previous=prev_status,
                                 execution=Execution("Running", start_time=started), met=resolved.met)
        state["status"]["runId"] = run_id
        self.store.write_json(self._state_key(r), state)
        run_store = self.run_store(r)
        execution, runtime = self._run_process(info.runtime or "", wire, run_store, run_key, run_id, state, started,
                                               resolved.inputs)
        state["status"] = derive(info, generation=generation, previous=state["status"], execution=execution,
                                 runtime=runtime)
        if runtime is not None and runtime.phase == "Succeeded":
            state["status"]["results"] = run_store.url(run_key)
        self.store.write_json(self._state_key(r), state)
        return Outcome(state)

    # --- served kinds (ModelDeployment): a local predictor instead of a run -------------------------------

    def registry(self, r: Resource[Any, Any]) -> Callable[[str, str], tuple[str, str]]:
        """The model registry of ``r``'s store: (model, version or latest) -> (version, URI)."""
        return store_registry(self.run_store(r), r.namespace)

    def _serve(self, r: Resource[Any, Any], state: dict[str, Any], prev_status: dict[str, Any] | None,
               generation: int) -> Outcome:
        """Start the deployment's predictor on 127.0.0.1 (it serves until :meth:`stop`); its status says
        where, with the served versions and the traffic split."""
        from earthops.control.local import serving

        run = make_run_id(generation, r)
        models = resolve_models(r, self._lookup(r.namespace), self.registry(r), wait=False)
        if not models.ready:
            state["status"] = deployment_status(generation=generation, previous=prev_status, models=models, run=run,
                                                observed=Observed(Execution("Failed", "ModelNotFound")))
            self.store.write_json(self._state_key(r), state)
            return Outcome(state)
        port = self.port + len(self.servers) if self.port else 0
        started = datetime.now(UTC)
        try:
            server = serving.start(r, models, port=port)
        except serving.ServerError as exc:
            observed = Observed(Execution("Failed", "PredictorDidNotStart", str(exc), start_time=started))
            state["status"] = deployment_status(generation=generation, previous=prev_status, observed=observed,
                                                models=models, run=run, monitored=r.spec.monitoring.enabled,
                                                drift_report=self._drift_report(r, models))  # an unusable drift reference
            self.store.write_json(self._state_key(r), state)
            return Outcome(state)
        self.servers.append(server)
        observed = server.observed()
        observed = Observed(dataclasses.replace(observed.execution, start_time=started), observed.fields)
        state["status"] = deployment_status(generation=generation, previous=prev_status, observed=observed,
                                            models=models, run=run, monitored=r.spec.monitoring.enabled,
                                            drift_report=self._drift_report(r, models))
        self.store.write_json(self._state_key(r), state)
        server.state = (r, state, generation, run)
        if r.spec.monitoring.enabled:
            threading.Thread(target=self._watch_drift, args=(server, DRIFT_POLL_S, self._drift_watch),
                             name=f"drift-{r.name}", daemon=True).start()
        return Outcome(state, server=server)

    # --- drift: the executor reads the reports, as the operator does ----------------------------------

    def _drift_report(self, r: Resource[Any, Any], models: Models) -> dict[str, Any] | None:
        """The latest drift report of the primary model version (a canary writes its own)."""
        version = models.primary.version if models.primary else None
        try:
            return read_latest(self.run_store(r), r.namespace, r.name, version) if r.spec.monitoring.enabled else None
        except StoreError:
            return None

    def refresh_drift(self, server: Any) -> Any:
        """Fold the deployment's latest drift report into its recorded status (``status.drift``, the
        ``Drift`` condition); returns the event when drift starts or ends, else None."""
        r, state, generation, run = server.state
        with self._state_lock:
            if not server.alive:
                return None
            before = state["status"]
            observed = server.observed()
            if before.get("startTime"):  # when it started serving, as _serve recorded it
                started = datetime.fromisoformat(before["startTime"].replace("Z", "+00:00"))
                observed = Observed(dataclasses.replace(observed.execution, start_time=started), observed.fields)
            after = deployment_status(generation=generation, previous=before, observed=observed,
                                      models=server.models, run=run, monitored=r.spec.monitoring.enabled,
                                      drift_report=self._drift_report(r, server.models))
            if after == before:
                return None
            state["status"] = after
            self.store.write_json(self._state_key(r), state)
        return drift_event(before, after)

    def _watch_drift(self, server: Any, every: float = DRIFT_POLL_S, stop: threading.Event | None = None) -> None:
        stop = stop or self._drift_watch
        while server.alive and not stop.wait(every):
            event = self.refresh_drift(server)
            if event is not None and self.on_drift_event is not None:
                self.on_drift_event(server.state[0], event)

    def record_stopped(self, server: Any, *, on_purpose: bool) -> dict[str, Any]:
        """Write a served resource's status once its predictor stopped: on purpose (Ctrl-C, SIGTERM, the
        end of ``--predict-once``) it is no longer served; by itself it Failed, with the end of its log."""
        r, state, generation, run = server.state
        observed = server.stopped() if on_purpose else server.observed()
        with self._state_lock:
            state["status"] = deployment_status(generation=generation, previous=state["status"], observed=observed,
                                                models=server.models, run=run)
            self.store.write_json(self._state_key(r), state)
        return state

    def stop(self) -> None:
        """Stop every predictor this executor started, and record that they stopped."""
        self._drift_watch.set()  # the watches of these servers end; a later _serve's gets a new Event
        self._drift_watch = threading.Event()
        for server in self.servers:
            alive = server.alive
            server.stop()  # closes its log, also when it exited by itself
            if alive:
                self.record_stopped(server, on_purpose=True)
        self.servers = []

    @staticmethod
    def _read_runtime(store: Store, run_key: str) -> RuntimeStatus | None:
        key = f"{run_key}/{STATUS_FILE}"
        try:
            return RuntimeStatus.model_validate(store.read_json(key)) if store.exists(key) else None
        except (StoreError, ValueError):
            return None  # mid-write on a store without atomic replace, or not there yet: poll again

    def _run_process(self, entrypoint: str, wire: dict[str, Any], run_store: Store, run_key: str, run_id: str,
                     state: dict[str, Any], started: datetime,
                     inputs: dict[str, str]) -> tuple[Execution, RuntimeStatus | None]:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(wire, f)
            resource_file = f.name
        cmd = [sys.executable, "-m", "earthops_runtime", "run", "--entrypoint", entrypoint,
               "--resource", resource_file, "--store", run_store.uri, "--run-key", run_key, "--run-id", run_id, *input_args(inputs)]
        if self.ray_address:
            cmd += ["--ray-address", self.ray_address]
        log_path = os.path.join(tempfile.gettempdir(), f"earthops-{run_id}.log")
        try:
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                try:
                    while proc.poll() is None:
                        time.sleep(self.poll_interval)
                        if self.on_progress:
                            self.on_progress(state, self._read_runtime(run_store, run_key))
                except KeyboardInterrupt:
                    proc.terminate()
                    proc.wait(30)
                    raise
        finally:
            os.unlink(resource_file)
        runtime = self._read_runtime(run_store, run_key)
        if self.on_progress:
            self.on_progress(state, runtime)
        ended = datetime.now(UTC)
        if proc.returncode == 0:
            return Execution("Succeeded", start_time=started, end_time=ended), runtime
        tail = open(log_path, errors="replace").read().strip().splitlines()[-5:]
        said = final_words(tail)
        if said is not None:  # the runtime could not write its status.json (the store failing): its last line
            reason, text = said
            return Execution("Failed", reason, f"{text} (log: {log_path})", start_time=started, end_time=ended), runtime
        message = f"the runtime exited with code {proc.returncode} (log: {log_path}): " + " | ".join(tail)
        return Execution("Failed", "RuntimeError", message, start_time=started, end_time=ended), runtime


def final_words(lines: list[str]) -> tuple[str, str] | None:
    """(reason, message) of the failure a runtime printed as its last line, as JSON, when it could not
    write its status.json; None when the last line is not that."""
    if not lines:
        return None
    try:
        doc = json.loads(lines[-1])
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("phase") != "Failed" or not isinstance(doc.get("reason"), str):
        return None
    return doc["reason"] or "RuntimeError", str(doc.get("message") or "")


def load_state(doc: dict[str, Any]) -> Resource[Any, Any]:
    """A recorded state document back as a resource (status included)."""
    return parse_resource({k: v for k, v in doc.items() if k != "specHash"}, "store")
