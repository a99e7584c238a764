from __future__ import annotations

import torch
from torch import nn


def flat_features(features: nn.Module, channels: int, height: int, width: int) -> int:
    """Size of the flattened feature map for one input, found by a dry run."""
    try:
        with torch.no_grad():
            return int(features(torch.zeros(1, channels, height, width)).shape[1])
    except RuntimeError as e:
        raise ValueError(f"a {channels}x{height}x{width} input is too small for this network "
                         f"({str(e).splitlines()[0]})") from None


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout)]


class FeaturesClassifier(nn.Module):
    """A plain CNN: `features` (convs, ending in Flatten) then `classifier` (linear layers)."""

    features: nn.Sequential
    classifier: nn.Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def widths(self) -> dict:
        """Actual layer widths, read from the layers (so they stay right after pruning)."""
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        fcs = [m for m in self.classifier if isinstance(m, nn.Linear)][:-1]
        return {"conv": [c.out_channels for c in convs], "fc": [f.out_features for f in fcs]}
