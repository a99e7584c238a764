from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageDataset:
    """A train/test split held as uint8 NCHW arrays, plus what a model needs to know about it."""

    name: str                 # "mnist", "cifar10" or the folder/archive name
    source: str               # which format was read, e.g. "cifar10-jpeg" (goes into model.json)
    path: str                 # the file or folder it was read from
    classes: list[str]
    train_x: np.ndarray       # uint8 [N, C, H, W]
    train_y: np.ndarray       # int64 [N]
    test_x: np.ndarray
    test_y: np.ndarray
    mean: tuple[float, ...] = field(default=())   # per channel, applied to pixel/255
    std: tuple[float, ...] = field(default=())

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def height(self) -> int:
        return int(self.train_x.shape[2])

    @property
    def width(self) -> int:
        return int(self.train_x.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def metadata(self) -> dict:
        """The dataset half of model.json (artifacts.card.ModelCard holds the whole)."""
        return {"dataset": self.name, "dataset_source": self.source, "classes": list(self.classes),
                "channels": self.channels, "height": self.height, "width": self.width,
                "mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std]}


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NCHW images, on the 0..1 scale."""
    sample = x[:: max(1, len(x) // 10000)].astype(np.float64) / 255.0
    return (tuple(sample.mean(axis=(0, 2, 3)).tolist()), tuple(sample.std(axis=(0, 2, 3)).tolist()))


def check_split(x: np.ndarray, y: np.ndarray, num_classes: int, where: str) -> None:
    from cnndeploy.errors import DatasetError

    if x.ndim != 4 or x.dtype != np.uint8:
        raise DatasetError(f"{where}: expected uint8 images [N, C, H, W], got {x.dtype} {x.shape}")
    if len(x) != len(y) or len(x) == 0:
        raise DatasetError(f"{where}: {len(x)} images but {len(y)} labels (expected equal, non-zero)")
    if y.min() < 0 or y.max() >= num_classes:
        raise DatasetError(f"{where}: labels outside 0..{num_classes - 1} "
                           f"(found {int(y.min())}..{int(y.max())})")


def normalise(pixels: np.ndarray, mean, std) -> np.ndarray:
    """uint8 NCHW pixels -> float32 (pixel/255 - mean) / std: the input every exported model takes."""
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return ((pixels.astype(np.float32) / 255.0 - m) / s).astype(np.float32)
