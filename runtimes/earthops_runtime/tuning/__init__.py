"""TuningExperiment runtime: asynchronous hyperparameter search on Ray Tune (entrypoint :func:`run`).

Modules: :mod:`.space` (search space -> Ray Tune, trial config -> model parameters and Training),
:mod:`.schedulers` (searchers, Maggy's median rule, ASHA, HyperBand/BOHB, PBT), :mod:`.experiment`
(the driver and the trial), :mod:`.report` (trials table, history, importance), :mod:`.plots`.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """``run`` (the :class:`~earthops_runtime.entrypoint.Runtime` named ``earthops_runtime.tuning:run``),
    imported on first use: the submodules that need no Ray (``space``, ``report``) stay light."""
    if name == "run":
        from earthops_runtime.tuning.experiment import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["run"]
