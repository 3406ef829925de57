"""The baselines of the tuning benchmark (tests/bench/test_bench_tuning.py), kept apart from the test so
Ray can ship them to its workers by value (``cloudpickle.register_pickle_by_value``).

* :func:`train_one` — one trial, as a plain function: the trial config applied with the engine's own
  :func:`earthops_runtime.tuning.space.apply_config`, the same :class:`~earthops_runtime.training.Trainer`
  (same threads, same batch caps), every epoch, no checkpoint, no early stopping. Run by the
  synchronous waves (a Ray task per trial).
* :func:`plain_trainable` — the same trial as a minimal Ray Tune function trainable: ``tune.report``
  of the epoch's metrics after every epoch, no checkpoint (what a user of plain Ray Tune writes); it
  also reports the running sum of its epochs' seconds, so the last result says where its time went.
"""

from __future__ import annotations

import time
from typing import Any


def _trainer(spec: dict[str, Any], dataset: str, config: dict[str, Any],
             caps: dict[str, int]) -> tuple[Any, int]:
    from earthops.api.tuning import TuningExperimentSpec
    from earthops_runtime.training import DatasetInfo, Trainer
    from earthops_runtime.tuning import space

    parsed = TuningExperimentSpec.model_validate(spec)
    params, training = space.apply_config(parsed, config)
    info = DatasetInfo.open(dataset)
    return Trainer(info, parsed.model.name, params, training, threads=1, **caps), training.epochs


def train_one(spec: dict[str, Any], dataset: str, config: dict[str, Any],
              caps: dict[str, int]) -> dict[str, Any]:
    """Train one trial for all its epochs; its metrics and where its time went."""
    import os

    started = time.perf_counter()
    trainer, epochs = _trainer(spec, dataset, config, caps)
    setup_s = time.perf_counter() - started
    history = []
    while trainer.epoch < epochs:
        history.append({k: float(v) for k, v in trainer.train_epoch().items()})
    return {
        "config": config, "history": history, "setup_s": setup_s,
        "busy_s": time.perf_counter() - started, "pid": os.getpid(),
    }


def plain_trainable(config: dict[str, Any], *, spec: dict[str, Any], dataset: str,
                    caps: dict[str, int]) -> None:
    """Ray Tune function trainable: the same trial, reported every epoch (no checkpoints)."""
    from ray import tune

    trainer, epochs = _trainer(spec, dataset, config["trial"], caps)
    epoch_seconds = 0.0
    while trainer.epoch < epochs:
        metrics = {k: float(v) for k, v in trainer.train_epoch().items()}
        epoch_seconds += metrics["epoch_seconds"]
        tune.report({**metrics, "epoch_seconds_sum": epoch_seconds})


def warm(seconds: float = 1.0) -> int:
    """Import what a trial imports (torch, the trainer) in a task worker, and hold it a moment so that
    concurrent calls land on different workers."""
    import os

    import torch  # noqa: F401

    import earthops_runtime.training  # noqa: F401

    time.sleep(seconds)
    return os.getpid()
