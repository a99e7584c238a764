"""`cnndeploy eval`: test accuracy of the exact file that ships, on the whole test split.

Each kind of file gets its runner (an ONNX file its `Classifier`, a run directory its torch
model, an engine TensorRT) and all of them go through `measure_accuracy`. The ONNX path imports
no torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cnndeploy.artifacts.card import ModelCard
from cnndeploy.data import ImageDataset, dataset_for
from cnndeploy.data.load import check_matches
from cnndeploy.runtime.accuracy import BATCH, measure_accuracy
from cnndeploy.runtime.classifier import Classifier


def evaluate_onnx(path: str | os.PathLike, *, dataset: str | None = None, data_dir: str | None = None,
                  batch_size: int = BATCH, threads: int | None = None,
                  ds: ImageDataset | None = None) -> dict[str, Any]:
    """Top-1 accuracy of the file on the whole test split (of `ds` where the caller loaded it)."""
    clf = Classifier(path, threads=threads)
    if ds is None:
        # an ONNX file does not carry where its data was; the run directory around it may know
        ds = dataset_for(clf.card, dataset=dataset, data_dir=data_dir, run_dir=Path(path).parent)
    else:  # loaded for model.json: the file's own metadata must agree (a stale export would not)
        check_matches(ds, clf.card)
    result = measure_accuracy(clf.logits, clf.card, ds, batch_size=batch_size)
    return {**result, "model": clf.card.model, "file": str(path)}


def evaluate_run(run_dir: str | os.PathLike, *, dataset: str | None = None,
                 data_dir: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Accuracy of a run directory's weights through PyTorch (fp32), from the saved files alone."""
    from cnndeploy.devices import pick_device
    from cnndeploy.models.weights import load_run
    from cnndeploy.runtime.runners import torch_model_runner

    dev = pick_device(device)
    model, card = load_run(run_dir, dev)
    ds = dataset_for(card, dataset=dataset, data_dir=data_dir)
    result = measure_accuracy(torch_model_runner(model, dev), card, ds)
    return {**result, "model": card.model, "run_dir": str(run_dir)}


def evaluate_engine(engine_path: str | os.PathLike, *, run_dir: str | os.PathLike | None = None,
                    dataset: str | None = None, data_dir: str | None = None,
                    batch_size: int = BATCH) -> dict[str, Any]:
    """Accuracy of a TensorRT engine; preprocessing comes from the model.json beside it."""
    from cnndeploy.runtime.runners import engine_runner

    path = Path(engine_path)
    card = ModelCard.read(Path(run_dir) if run_dir else path.parent)
    run = engine_runner(path)
    ds = dataset_for(card, dataset=dataset, data_dir=data_dir)
    return {**measure_accuracy(run, card, ds, batch_size=batch_size), "model": card.model, "file": str(path)}


def evaluate_path(path: str, *, dataset: str | None = None, data_dir: str | None = None,
                  device: str = "auto") -> dict[str, Any]:
    """Whichever `path` is: MODEL.onnx, MODEL.engine or RUN_DIR."""
    if path.endswith(".onnx"):
        return evaluate_onnx(path, dataset=dataset, data_dir=data_dir)
    if path.endswith(".engine"):
        return evaluate_engine(path, dataset=dataset, data_dir=data_dir)
    return evaluate_run(path, dataset=dataset, data_dir=data_dir, device=device)
