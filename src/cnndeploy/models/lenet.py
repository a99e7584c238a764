"""LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling, as in most modern re-implementations."""

from __future__ import annotations

from torch import nn

from cnndeploy.models.common import FeaturesClassifier, flat_features


class LeNet5(FeaturesClassifier):
    """conv5-pool-conv5-pool-fc-fc-fc.

    28x28 inputs get padding 2 in the first convolution so that both 28x28 and 32x32
    reach the classic 5x5x16 feature map before the classifier.
    """

    def __init__(self, num_classes: int, channels: int, height: int, width: int, *,
                 conv: tuple[int, int] = (6, 16), fc: tuple[int, int] = (120, 84)) -> None:
        super().__init__()
        pad = 2 if min(height, width) < 32 else 0
        self.features = nn.Sequential(
            nn.Conv2d(channels, conv[0], 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(conv[0], conv[1], 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        n_flat = flat_features(self.features, channels, height, width)
        self.classifier = nn.Sequential(
            nn.Linear(n_flat, fc[0]), nn.ReLU(inplace=True),
            nn.Linear(fc[0], fc[1]), nn.ReLU(inplace=True),
            nn.Linear(fc[1], num_classes),
        )
