"""Validation accuracy of a run's float weights (the distillation trial's one decision)."""

from __future__ import annotations

from pathlib import Path

from cnndeploy.data.types import ImageDataset


def torch_val_accuracy(run: Path, val: ImageDataset) -> float:
    """Top-1 of RUN's FP32 weights on `val`'s evaluation split (the validation images)."""
    from cnndeploy.models.weights import load_run
    from cnndeploy.runtime.accuracy import measure_accuracy
    from cnndeploy.runtime.runners import torch_model_runner

    model, card = load_run(run)
    return measure_accuracy(torch_model_runner(model.eval()), card, val)["test_accuracy"]
