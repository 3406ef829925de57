"""Model factories named by import path in the zoo and trainer tests (``tests.unit.custom_models:tiny``).

The annotations are strings (``from __future__ import annotations``), as in most user code: the
zoo must still read the argument types from them."""

from __future__ import annotations

from typing import Any

from torch import nn


def tiny(in_channels: int, num_classes: int, task: str, chip_shape: tuple[int, int], hidden: int = 4,
         pool: bool = True, scale: float = 1.0) -> nn.Module:
    """A 1x1 convolution, then logits per chip (global pool) or per pixel (no pool)."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 1), nn.ReLU()]
    if task == "segmentation" or not pool:
        return nn.Sequential(*layers, nn.Conv2d(hidden, num_classes, 1))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, num_classes))


def channels_only(in_channels, num_classes, width=8):
    """Takes only two of the data arguments, and its tunable one has no annotation (typed by default)."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))


#: The keyword arguments the last :func:`anything` call got.
SEEN: dict[str, Any] = {}


def anything(**kwargs: Any) -> nn.Module:
    """Takes any keyword: gets the data arguments and the parameters unconverted."""
    SEEN.clear()
    SEEN.update(kwargs)
    return tiny(kwargs["in_channels"], kwargs["num_classes"], kwargs["task"], kwargs["chip_shape"])


def wrong_width(in_channels: int, num_classes: int) -> nn.Module:
    """Logits for one class more than asked: the trainer must refuse it."""
    return channels_only(in_channels, num_classes + 1)


def not_a_module(in_channels: int, num_classes: int) -> int:
    return in_channels * num_classes


def refuses(in_channels: int, num_classes: int, hidden: int = 4) -> nn.Module:
    raise ValueError(f"hidden={hidden} is too small for {in_channels} bands")


NOT_CALLABLE = 3
