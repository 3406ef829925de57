"""TuningExperiment runtime: asynchronous hyperparameter search on Ray Tune (entrypoint :func:`run`).

Modules: :mod:`.space` (search space -> Ray Tune, trial config -> model parameters and Training),
:mod:`.schedulers` (searchers, Maggy's median rule, ASHA, HyperBand/BOHB, PBT), :mod:`.experiment`
(the driver and the trial), :mod:`.report` (trials table, history, importance), :mod:`.plots`.
"""

from __future__ import annotations

from typing import Any


def run(**kwargs: Any) -> None:
    """Entry point ``earthops_runtime.tuning:run`` (see :func:`earthops_runtime.tuning.experiment.run`)."""
    from earthops_runtime.tuning.experiment import run as _run

    _run(**kwargs)


__all__ = ["run"]
