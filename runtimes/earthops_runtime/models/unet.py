"""``unet-small``: a small U-Net (Ronneberger et al. 2015) for per-pixel classes of multispectral chips.

``depth`` encoder stages (``enc1`` at full resolution, each later one after a 2x2 max-pool, channels
``width``, 2x, 4x ...), a ``bottleneck`` one stage deeper (with optional channel dropout), decoder
stages ``dec<depth>``..``dec1`` (2x2 transposed convolution up, concatenation with the encoder stage
of the same resolution, two 3x3 convolutions) and a 1x1 ``head`` to ``num_classes`` logits. Each
stage is two 3x3 convolutions with batch norm and ReLU, padded, so only the pools change sizes.

Any chip size works: the input is zero-padded on the bottom and right to a multiple of
``2 ** depth`` (zero is the training mean after normalisation) and the logits are cropped back, so
the output is ``(B, num_classes, H, W)`` for the input's ``H, W``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def padding_for(length: int, depth: int) -> int:
    """Pixels to add to ``length`` to make it divisible by ``2 ** depth``."""
    return -length % (2 ** depth)


def double_conv(in_channels: int, channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
    )


class Down(nn.Module):
    """Max-pool by 2, then two convolutions (then channel dropout, used by the bottleneck)."""

    def __init__(self, in_channels: int, channels: int, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = double_conv(in_channels, channels)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.conv(self.pool(x)))


class Up(nn.Module):
    """Upsample by 2, join the skip connection, two convolutions."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, channels, 2, stride=2)
        self.conv = double_conv(2 * channels, channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNetSmall(nn.Module):
    """Children: ``enc1``..``enc<depth>``, ``bottleneck``, ``dec<depth>``..``dec1``, ``head``."""

    def __init__(self, in_channels: int, num_classes: int, *, width: int = 32, depth: int = 3, dropout: float = 0.0):
        super().__init__()
        self.depth = depth
        channels = [width * 2 ** i for i in range(depth + 1)]
        self.enc1 = double_conv(in_channels, channels[0])
        for i in range(1, depth):
            self.add_module(f"enc{i + 1}", Down(channels[i - 1], channels[i]))
        self.bottleneck = Down(channels[depth - 1], channels[depth], dropout)
        for i in range(depth, 0, -1):
            self.add_module(f"dec{i}", Up(channels[i], channels[i - 1]))
        self.head = nn.Conv2d(channels[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = padding_for(h, self.depth), padding_for(w, self.depth)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        skips = []
        for i in range(1, self.depth + 1):
            x = getattr(self, f"enc{i}")(x)
            skips.append(x)
        x = self.bottleneck(x)
        for i in range(self.depth, 0, -1):
            x = getattr(self, f"dec{i}")(x, skips[i - 1])
        return self.head(x)[..., :h, :w]


def unet_small(*, in_channels: int, num_classes: int, task: str, chip_shape: tuple[int, int], width: int = 32,
               depth: int = 3, dropout: float = 0.0) -> UNetSmall:
    """Factory (zoo signature): segmentation logits ``(B, num_classes, H, W)`` for any ``H, W``."""
    return UNetSmall(in_channels, num_classes, width=width, depth=depth, dropout=dropout)
