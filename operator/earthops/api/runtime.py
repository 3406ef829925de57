"""The runtime status file: what the data plane tells the control plane about a run.

Each runtime entrypoint writes ``status.json`` in its run folder (atomically, as often as it likes).
The operator and the embedded executor read it and project it into the resource status with the same
function (:func:`earthops.control.status.derive`). Results use the kind's status field names (camelCase), so
they can be merged into the resource status as they are.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from earthops.api.base import ApiModel
from earthops.api.common import Progress

STATUS_FILE = "status.json"


class RuntimeStatus(ApiModel):
    """Content of ``<run folder>/status.json``."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed"]
    """Where the run is."""
    run_id: str
    """The run this file belongs to."""
    generation: int | None = None
    """The resource generation the run was started for."""
    progress: Progress = Field(default_factory=Progress)
    """Units done out of total."""
    reason: str = ""
    """A CamelCase reason when the run failed (e.g. ``InvalidSource``)."""
    message: str = ""
    """A sentence for people."""
    stage: str = ""
    """What the run is doing, in a few words (``processing scenes``, ``running trials``, ``registering
    the best trial's model``)."""
    stages: list[str] = Field(default_factory=list)
    """Every stage of the run so far, in order (the command line prints a line for each, also for one
    that began and ended between two of its reads)."""
    results: dict[str, Any] = Field(default_factory=dict)
    """Kind-specific status fields (camelCase), merged into the resource status."""
    detail: dict[str, Any] | None = None
    """Detail for people watching the run, replaced on each report (e.g. the trial table: ``objective``
    ``{metric, goal, value}``, ``epochs`` and ``trials``, a list of ``{id, state, parameters, objective,
    best, epochs, seconds, error}``). Never merged into the resource status."""
    updated_at: datetime
    """When the file was written."""
