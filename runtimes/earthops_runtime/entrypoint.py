"""The entrypoint protocol: how every kind's runtime runs, reports and replays — written once.

A kind's runtime is a :class:`Runtime`: a function from a :class:`Run` (the resource, its inputs, the
store and its run folder) to an :class:`Outcome`, plus how to replay a run that is already published.
:func:`execute` is the one path around it, used by ``python -m earthops_runtime run``:

* a run folder that is already published (a rerun of a finished generation, a restarted driver) is
  not run again: its ``summary.json`` is read and :attr:`Runtime.replay` reports what it published;
* otherwise the runtime runs; :class:`~earthops_runtime.errors.RunFailed` (and its
  :class:`~earthops_runtime.errors.SpecError`) ends the run ``Failed`` with its reason, nothing published;
* an :class:`Outcome` ends it ``Succeeded`` with the kind's status fields as ``results``.

Every report goes through one :class:`Reporter`: ``status.json`` in the run folder, written atomically,
which the control plane projects into the resource status.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from earthops.api import Resource
from earthops.api.common import Progress
from earthops.api.runtime import STATUS_FILE, RuntimeStatus
from earthops.core.store import Store
from earthops_runtime.errors import RunFailed

#: Every kind publishes its headline results in ``<run folder>/summary.json`` (``{"results": ...}``),
#: which is what a replay reads.
SUMMARY_FILE = "summary.json"


class Reporter:
    """Writes the run's :class:`RuntimeStatus` to ``<run folder>/status.json`` in the store.

    The run folder's published content appears atomically at the end; ``status.json`` lives beside it
    under the same prefix and is replaced whole on every report, so the control plane can poll it."""

    def __init__(self, store: Store, run_key: str, run_id: str, generation: int | None):
        self.store = store
        self.key = f"{run_key}/{STATUS_FILE}"
        self.status = RuntimeStatus(phase="Pending", run_id=run_id, generation=generation, updated_at=datetime.now(UTC))

    def report(
        self,
        phase: str | None = None,
        *,
        done: int | None = None,
        total: int | None = None,
        unit: str | None = None,
        message: str | None = None,
        stage: str | None = None,
        reason: str | None = None,
        results: dict[str, Any] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> RuntimeStatus:
        """Merge what is given into the status and write it. ``results`` are merged key by key;
        ``detail`` (live detail for people, e.g. ``{"trials": [...]}``) replaces the previous one;
        ``stage`` names what the run does from now on (a line on the command line each time it changes)."""
        s = self.status
        progress = Progress(
            done=s.progress.done if done is None else done,
            total=s.progress.total if total is None else total,
            unit=s.progress.unit if unit is None else unit,
        )
        self.status = s.model_copy(
            update={
                "phase": phase or s.phase,
                "progress": progress,
                "message": s.message if message is None else message,
                "stage": s.stage if stage is None else stage,
                "stages": [*s.stages, stage] if stage and stage != s.stage else s.stages,
                "reason": s.reason if reason is None else reason,
                "results": {**s.results, **(results or {})},
                "detail": s.detail if detail is None else detail,
                "updated_at": datetime.now(UTC),
            }
        )
        self.store.write_json(self.key, self.status.model_dump(mode="json", by_alias=True, exclude_none=True))
        return self.status


@dataclass(frozen=True)
class Run:
    """What a kind's runtime gets: the resource, the published runs it references, where to write."""

    resource: Resource[Any, Any]
    store: Store
    #: The run folder, relative to the store root (``<area>/<ns>/<name>/<run-id>``).
    key: str
    reporter: Reporter
    #: Input key -> URI of a referenced resource's published run (``{"dataset": "s3://..."}``).
    inputs: Mapping[str, str] = field(default_factory=dict)
    #: An existing Ray cluster; None starts or joins a local one.
    ray_address: str | None = None

    @property
    def id(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    def input(self, key: str, field_name: str, name: str) -> str:
        """The URI of input ``key``, or a :class:`SpecError` naming the reference field (the control
        plane resolves references before it starts a run, so this only fails when called by hand)."""
        from earthops_runtime.errors import SpecError

        uri = self.inputs.get(key)
        if not uri:
            raise SpecError(field_name, f"no {key} run for {name!r} was given to the runtime "
                            f"(expected --input {key}=<published run URI>)", reason=f"{key.capitalize()}NotReady")
        return uri


@dataclass(frozen=True)
class Outcome:
    """How a run ended well: the kind's status fields, a sentence, the final progress, and the final
    detail for people (replacing the live one, e.g. the trial table as the trials file has it)."""

    results: dict[str, Any]
    message: str
    done: int | None = None
    total: int | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True)
class Runtime:
    """A kind's runtime, named in ``earthops.api.KINDS`` as ``module:attribute``."""

    #: What progress counts (``scenes``, ``trials``).
    unit: str
    #: Does the work and publishes the run folder atomically (``store.publish(run.key)``).
    body: Callable[[Run], Outcome]
    #: The outcome of an already published run, from its ``summary.json`` (no work is redone).
    replay: Callable[[Resource[Any, Any], dict[str, Any]], Outcome]

    def __call__(self, run: Run) -> None:
        execute(self, run)


def execute(runtime: Runtime, run: Run) -> None:
    """Run (or replay) one resource's work and report how it ended; see the module docstring."""
    reporter = run.reporter
    if run.store.is_published(run.key):
        outcome = runtime.replay(run.resource, run.store.read_json(f"{run.key}/{SUMMARY_FILE}"))
        reporter.report("Succeeded", done=outcome.done, total=outcome.total, unit=runtime.unit,
                        message="already published", results=outcome.results)
        return
    reporter.report("Running", unit=runtime.unit, message="started")
    try:
        outcome = runtime.body(run)
    except RunFailed as exc:
        reporter.report("Failed", reason=exc.reason, message=str(exc), stage="")
        return
    reporter.report("Succeeded", done=outcome.done, total=outcome.total, unit=runtime.unit,
                    message=outcome.message, results=outcome.results, detail=outcome.detail, stage="")


__all__ = ["SUMMARY_FILE", "Outcome", "Reporter", "Run", "Runtime", "execute"]
