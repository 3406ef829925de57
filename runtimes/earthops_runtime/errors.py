"""The data plane's errors: one failure type for a run, and the spec and scene errors beside it.

* :class:`RunFailed` — the run cannot succeed; its CamelCase ``reason`` and message end up in
  ``status.json`` and nothing is published. The entrypoint protocol (:mod:`earthops_runtime.entrypoint`)
  turns it into a ``Failed`` status, whichever kind raised it.
* :class:`SpecError` — a :class:`RunFailed` that names the spec field that does not work with the data
  (unknown band, index with missing bands, empty search, a model parameter the model refuses).
* :class:`SceneError` — one scene cannot be used; a dataset run records it and goes on within its
  failure budget.

All three survive pickling across Ray workers with their own arguments.
"""

from __future__ import annotations

from typing import Any


class RunFailed(Exception):
    """The run cannot succeed (failure budget exceeded, validation failed, unknown metric, ...)."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.reason, str(self))


class SpecError(RunFailed, ValueError):
    """The spec cannot work with the data: the message names the field and what is accepted."""

    def __init__(self, field: str, message: str, reason: str = "InvalidSpec"):
        self.field = field
        self.detail = message
        super().__init__(reason, f"{field}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:  # a trial's SpecError reaches the Ray driver intact
        return type(self), (self.field, self.detail, self.reason)


class SceneError(Exception):
    """A scene cannot be used (corrupt, incomplete, unreadable); the run records it and goes on
    within its failure budget."""

    def __init__(self, scene_id: str, reason: str):
        self.scene_id = scene_id
        self.reason = reason
        super().__init__(f"scene {scene_id}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.scene_id, self.reason)


__all__ = ["RunFailed", "SceneError", "SpecError"]
