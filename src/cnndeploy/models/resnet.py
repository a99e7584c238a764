"""CIFAR-style ResNets: 3x3 stem, no max-pool, BasicBlocks.

- `resnet18`: the widely used CIFAR variant of ResNet-18 (stages 64-128-256-512, 2 blocks each).
- `resnet20`, `resnet56`: He et al. (2016), section 4.2: stages 16-32-64 with 3 or 9 blocks.
  Down-sampling shortcuts are 1x1 convolutions + BN (option B) instead of the paper's
  zero-padding (option A), so that every channel has a real weight that pruning can remove.

Widths are explicit so a pruned network can be rebuilt from `model.json`: `stages` are the
widths of the residual stream per stage (coupled through the identity shortcuts), `inner`
the width inside each block (free to differ after pruning).
"""

from __future__ import annotations

import torch
from torch import nn

from cnndeploy.models.common import conv_bn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, mid, 3, stride)
        self.conv2, self.bn2 = conv_bn(mid, cout, 3)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity: faster, stabler start
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, num_classes: int, channels: int, height: int, width: int, *,
                 stages: tuple[int, ...], blocks: tuple[int, ...],
                 inner: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if len(stages) != len(blocks):
            raise ValueError(f"resnet needs one width per stage: stages={stages} blocks={blocks}")
        inner = tuple(inner) if inner is not None else tuple(
            w for w, n in zip(stages, blocks) for _ in range(n))
        if len(inner) != sum(blocks):
            raise ValueError(f"resnet needs {sum(blocks)} inner widths, got {len(inner)}")
        self.stem = nn.Sequential(*conv_bn(channels, stages[0]), nn.ReLU(inplace=True))
        layers, cin, k = [], stages[0], 0
        for s, (cout, n) in enumerate(zip(stages, blocks)):
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                layers.append(BasicBlock(cin, inner[k], cout, stride))
                cin, k = cout, k + 1
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        self._blocks = tuple(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))))

    def widths(self) -> dict:
        blocks = list(self.layers)
        ends = [sum(self._blocks[: i + 1]) - 1 for i in range(len(self._blocks))]
        return {"stages": [blocks[e].conv2.out_channels for e in ends],
                "blocks": list(self._blocks),
                "inner": [b.conv1.out_channels for b in blocks]}
