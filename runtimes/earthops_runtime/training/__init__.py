"""The one trainer (tuning trials, ablation trials, final models): dataset info, losses and metrics
per label task, training with checkpoints."""

from earthops_runtime.training.data import DatasetInfo
from earthops_runtime.training.metrics import metric_names
from earthops_runtime.training.trainer import CHECKPOINT_FILE, Trainer

__all__ = ["CHECKPOINT_FILE", "DatasetInfo", "Trainer", "metric_names"]
