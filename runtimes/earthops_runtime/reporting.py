"""How a runtime entrypoint reports: ``status.json`` in its run folder, written atomically."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from earthops.api.common import Progress
from earthops.api.runtime import STATUS_FILE, RuntimeStatus
from earthops.store import Store


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
        reason: str | None = None,
        results: dict[str, Any] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> RuntimeStatus:
        """Merge what is given into the status and write it. ``results`` are merged key by key;
        ``detail`` (live detail for people, e.g. ``{"trials": [...]}``) replaces the previous one."""
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
                "reason": s.reason if reason is None else reason,
                "results": {**s.results, **(results or {})},
                "detail": s.detail if detail is None else detail,
                "updated_at": datetime.now(UTC),
            }
        )
        self.store.write_json(self.key, self.status.model_dump(mode="json", by_alias=True, exclude_none=True))
        return self.status
