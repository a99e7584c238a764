"""AlexNet (Krizhevsky et al., 2012) adapted to 28x28 and 32x32 inputs.

Adaptation, kept to what the small inputs force or what makes it train reliably:
- five 3x3 stride-1 convolutions (the original's 11x11/4 and 5x5 stems would shrink a
  32x32 image to nothing) with the original widths 64-192-384-256-256;
- 2x2 max-pooling after conv1, conv2 and conv5 (32 -> 16 -> 8 -> 4, 28 -> 14 -> 7 -> 3);
- BatchNorm after every convolution (the original used local response normalisation);
- three fully connected layers with dropout 0.5 before the first two, 1024 wide instead
  of 4096 because the feature map is 4x4 rather than 6x6 and the datasets have 10 classes.
"""

from __future__ import annotations

from torch import nn

from cnndeploy.models.common import FeaturesClassifier, conv_bn, flat_features

POOL_AFTER = (0, 1, 4)  # indices of the convolutions followed by max-pooling


class AlexNet(FeaturesClassifier):
    def __init__(self, num_classes: int, channels: int, height: int, width: int, *,
                 conv: tuple[int, ...] = (64, 192, 384, 256, 256), fc: tuple[int, int] = (1024, 1024),
                 dropout: float = 0.5) -> None:
        super().__init__()
        if len(conv) != 5 or len(fc) != 2:
            raise ValueError(f"alexnet needs 5 conv widths and 2 fc widths, got conv={conv} fc={fc}")
        layers: list[nn.Module] = []
        cin = channels
        for i, cout in enumerate(conv):
            layers += conv_bn(cin, cout) + [nn.ReLU(inplace=True)]
            if i in POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        n_flat = flat_features(self.features, channels, height, width)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(n_flat, fc[0]), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(fc[0], fc[1]), nn.ReLU(inplace=True),
            nn.Linear(fc[1], num_classes),
        )

    def widths(self) -> dict:
        dropout = next(m.p for m in self.classifier if isinstance(m, nn.Dropout))
        return {**super().widths(), "dropout": dropout}
