"""AblationStudy runtime: leave-one-component-out trials on Ray Tune (entrypoint :func:`run`).

Modules: :mod:`.plan` (components -> trials, checked against the dataset and the model before any
trial), :mod:`.surgery` (removing named submodules: identity, or the model's own rebuild), :mod:`.stats`
(paired differences, intervals, Holm, ranks; pure), :mod:`.study` (the driver and the trial),
:mod:`.report` (results table, Markdown and HTML report, bar chart, STAC item).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """``run`` (the :class:`~earthops_runtime.entrypoint.Runtime` named ``earthops_runtime.ablation:run``),
    imported on first use: :mod:`.stats` stays light."""
    if name == "run":
        from earthops_runtime.ablation.study import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["run"]
