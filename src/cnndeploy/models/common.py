from __future__ import annotations

import torch
from torch import nn


def flat_features(features: nn.Module, channels: int, height: int, width: int) -> int:
    """Size of the flattened feature map for one input, found by a dry run."""
    with torch.no_grad():
        return int(features(torch.zeros(1, channels, height, width)).shape[1])


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout)]
