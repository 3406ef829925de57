"""``resnet18-ms``: ResNet-18 (He et al. 2016) for any number of input bands, trained from scratch.

Written here rather than taken from torchvision: torchvision is not a dependency, and its ImageNet
weights (3 bands, downloaded) would be of no use to 4-15 band chips anyway. The layout is
torchvision's ``resnet18``: a stem, ``layer1``..``layer4`` of two basic blocks each (``width``,
2x, 4x, 8x channels; strides 1, 2, 2, 2), then a ``head`` (global average pool, dropout, linear), with
the same initialisation (Kaiming for convolutions, unit batch-norm scales).

``small_input`` swaps the ImageNet stem (7x7 stride-2 convolution, then a stride-2 max-pool: 4x
smaller maps before ``layer1``) for one 3x3 stride-1 convolution, the usual choice for chips of
32-64 px, where the ImageNet stem leaves ``layer4`` a 2x2 map or less.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, plus the input (projected when the shape changes)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18MS(nn.Module):
    """Children: ``stem``, ``layer1``..``layer4`` (two :class:`BasicBlock` each) and ``head``."""

    def __init__(self, in_channels: int, num_classes: int, *, width: int = 64, dropout: float = 0.0,
                 small_input: bool = False):
        super().__init__()
        if small_input:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, stride=2, padding=1))
        channels = width
        for i, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2)), start=1):
            out = width * mult
            self.add_module(f"layer{i}", nn.Sequential(BasicBlock(channels, out, stride), BasicBlock(out, out)))
            channels = out
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.head(x)


def resnet18_ms(*, in_channels: int, num_classes: int, task: str, chip_shape: tuple[int, int], width: int = 64,
                dropout: float = 0.0, small_input: bool = False) -> ResNet18MS:
    """Factory (zoo signature): classification or multilabel logits; any chip size (global pooling)."""
    return ResNet18MS(in_channels, num_classes, width=width, dropout=dropout, small_input=small_input)
