"""Calibration images: a fixed random subset of the training split, preprocessed like the model."""

from __future__ import annotations

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from cnndeploy.artifacts.card import ModelCard
from cnndeploy.data import ImageDataset, dataset_for
from cnndeploy.data.types import normalise


def calibration_images(card: ModelCard, *, size: int, seed: int, data_dir: str | None = None,
                       ds: ImageDataset | None = None) -> np.ndarray:
    """`size` training images (seeded choice), as normalised float32 NCHW (from `ds` if loaded)."""
    ds = ds or dataset_for(card, data_dir=data_dir)
    idx = np.sort(np.random.default_rng(seed).choice(len(ds.train_y), min(size, len(ds.train_y)),
                                                      replace=False))
    return normalise(ds.train_x[idx], card.mean, card.std)


class BatchReader(CalibrationDataReader):
    """Feeds calibration images to onnxruntime in batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 32) -> None:
        self._batches = iter([{input_name: images[i:i + batch_size]}
                              for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict | None:
        return next(self._batches, None)
