"""The one test-accuracy loop: eval, bench, quant, prune and the demo's tables all measure with it.

A runner is any callable from a normalised float32 NCHW batch to [N, classes] logits (an ONNX
session, a torch model, a TensorRT engine), so the number is the same computation whichever
backend produced the logits.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from cnndeploy.artifacts.card import ModelCard
from cnndeploy.data.types import ImageDataset, normalise

Runner = Callable[[np.ndarray], np.ndarray]
BATCH = 256


def measure_accuracy(run: Runner, card: ModelCard, ds: ImageDataset, *, batch_size: int = BATCH) -> dict[str, Any]:
    """Top-1 accuracy of `run` on the whole test split of `ds`, preprocessed as `card` says."""
    correct = 0
    for start in range(0, len(ds.test_y), batch_size):
        x = normalise(ds.test_x[start:start + batch_size], card.mean, card.std)
        logits = np.asarray(run(x))
        correct += int((logits.argmax(1) == ds.test_y[start:start + batch_size]).sum())
    return {"test_accuracy": correct / len(ds.test_y), "n": len(ds.test_y), "dataset_source": ds.source}

