"""``iceberg-cnn``: the ship/iceberg classifier of the Maggy paper, for any bands and chip size.

The paper's model (a Keras ``Sequential`` for 75x75 Sentinel-1 chips of HH, HV and their average):
four convolution blocks of 64, 128, 128 and 64 filters, each convolution -> ReLU -> max-pool (stride 2)
-> dropout, then dense layers of 512 and 256 units with dropout, then the output. Two deliberate
departures, both so that every point of the paper's search space (kernel 2-5, pool 2-3) builds:

* Convolutions pad by ``kernel_size // 2`` (the paper's are unpadded). Unpadded 5x5 convolutions and
  3x3 pools shrink a 75 px chip to nothing by the fourth block; padded ones leave the shrinking to
  the pools (an even kernel grows the map by one pixel, which is harmless and needs no asymmetric
  padding copy).
* Pools never ask for more than the map has: the pool kernel is capped at the map size and pooling
  rounds up (``ceil_mode``), so a map never drops below 1 px, whatever the chip size.

The output is ``num_classes`` logits (two for ship/iceberg rather than the paper's one sigmoid unit:
the same model then serves any number of classes and multilabel targets; the loss applies the
softmax or sigmoid). ``width`` scales every filter and unit count (1.0 = the paper's sizes), so tests
and benchmarks on a few CPU cores can run the same architecture smaller.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

FILTERS = (64, 128, 128, 64)
DENSE = (512, 256)
POOL_STRIDE = 2


def scaled(count: int, width: float) -> int:
    """A layer size multiplied by ``width``, at least 1."""
    return max(1, round(count * width))


def conv_out(length: int, kernel_size: int) -> int:
    """Output length of a stride-1 convolution padded by ``kernel_size // 2`` on both sides."""
    return length + 2 * (kernel_size // 2) - kernel_size + 1


def pool_out(length: int, kernel: int, stride: int = POOL_STRIDE) -> int:
    """Output length of ``MaxPool2d(kernel, stride, ceil_mode=True)`` without padding (PyTorch's rule:
    round up, but the last window must start inside the input)."""
    out = math.ceil((length - kernel) / stride) + 1
    return out - 1 if (out - 1) * stride >= length else out


class IcebergCNN(nn.Module):
    """Children, in order (the paper's layers, named as its Keras model groups them): ``conv1``, ``pool1``,
    ``dropout1``, ... ``conv4``, ``pool4``, ``dropout4`` (convolution + ReLU, max-pool, dropout), ``dense1``,
    ``dropout5``, ``dense2``, ``dropout6`` (linear + ReLU, dropout) and ``head`` (linear to ``num_classes``
    logits); the maps are flattened before the first of the dense part.

    ``without``: names of children to build the model without (an ablation), the shapes of the
    remaining layers following (a convolution left out passes its input channels on, a pool its map
    size); :meth:`without` builds such a variant of a model. ``conv1`` and ``head`` cannot be left out."""

    def __init__(self, in_channels: int, num_classes: int, chip_shape: tuple[int, int], *, kernel_size: int = 3,
                 pool_size: int = 2, dropout: float = 0.2, width: float = 1.0, without: Iterable[str] = ()):
        super().__init__()
        skip = frozenset(without)
        self.arguments = {"in_channels": in_channels, "num_classes": num_classes, "chip_shape": tuple(chip_shape),
                          "kernel_size": kernel_size, "pool_size": pool_size, "dropout": dropout, "width": width}
        self.removed = skip
        h, w = chip_shape
        channels = in_channels
        for i, filters in enumerate(FILTERS, start=1):
            if f"conv{i}" not in skip:
                filters = scaled(filters, width)
                h, w = conv_out(h, kernel_size), conv_out(w, kernel_size)
                self.add_module(f"conv{i}", nn.Sequential(
                    nn.Conv2d(channels, filters, kernel_size, padding=kernel_size // 2), nn.ReLU(inplace=True)))
                channels = filters
            if f"pool{i}" not in skip:
                pool = (min(pool_size, h), min(pool_size, w))
                self.add_module(f"pool{i}", nn.MaxPool2d(pool, stride=POOL_STRIDE, ceil_mode=True))
                h, w = pool_out(h, pool[0]), pool_out(w, pool[1])
            if f"dropout{i}" not in skip:
                self.add_module(f"dropout{i}", nn.Dropout(dropout))
        features = channels * h * w
        self._flatten_at = ""
        for i, units in enumerate(DENSE, start=1):
            if f"dense{i}" not in skip:
                units = scaled(units, width)
                self.add_module(f"dense{i}", nn.Sequential(nn.Linear(features, units), nn.ReLU(inplace=True)))
                self._flatten_at = self._flatten_at or f"dense{i}"
                features = units
            if f"dropout{len(FILTERS) + i}" not in skip:
                self.add_module(f"dropout{len(FILTERS) + i}", nn.Dropout(dropout))
        self.head = nn.Linear(features, num_classes)
        self._flatten_at = self._flatten_at or "head"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = False
        for name, module in self.named_children():
            if not flat and name == self._flatten_at:
                x, flat = torch.flatten(x, 1), True
            x = module(x)
        return x

    def without(self, names: Iterable[str]) -> IcebergCNN:
        """The same model built without the children ``names`` (and those this one already lacks)."""
        unknown = sorted(set(names) - {n for n, _ in self.named_children()})
        if unknown:
            raise ValueError(f"no child {', '.join(unknown)} in this model")
        return IcebergCNN(**self.arguments, without=self.removed | frozenset(names))  # type: ignore[arg-type]


def iceberg_cnn(*, in_channels: int, num_classes: int, task: str, chip_shape: tuple[int, int], kernel_size: int = 3,
                pool_size: int = 2, dropout: float = 0.2, width: float = 1.0) -> IcebergCNN:
    """Factory (zoo signature): ``task`` is classification or multilabel, the head is the same."""
    return IcebergCNN(in_channels, num_classes, chip_shape, kernel_size=kernel_size, pool_size=pool_size,
                      dropout=dropout, width=width)
