"""Test-only custom models (``tests.integration.crashing_models:factory``) that crash on purpose."""

from __future__ import annotations

import torch
from torch import nn

from earthops_runtime.models.iceberg import iceberg_cnn


class _CrashInTraining(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("deliberate crash while training (crash=2)")
        return self.inner(x)


def factory(*, in_channels: int, num_classes: int, task: str, chip_shape: tuple[int, int], crash: int = 0,
            width: float = 0.25, dropout: float = 0.2, oom: int = 0) -> nn.Module:
    """iceberg-cnn; ``crash=1`` raises while building, ``crash=2`` in the first training step;
    ``oom=1`` raises torch.OutOfMemoryError in the first training step."""
    if crash == 1:
        raise ValueError("deliberate crash while building the model (crash=1)")
    model = iceberg_cnn(in_channels=in_channels, num_classes=num_classes, task=task, chip_shape=chip_shape, width=width,
                        dropout=dropout)
    if crash == 2:
        return _CrashInTraining(model)
    if oom:
        return _OutOfMemory(model)
    return model


class _OutOfMemory(_CrashInTraining):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return self.inner(x)
