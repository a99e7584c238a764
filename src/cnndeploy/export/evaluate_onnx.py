"""`cnndeploy eval MODEL.onnx`: accuracy of the exact file that ships, on the whole test set."""

from __future__ import annotations

import os
from typing import Any

from cnndeploy.data import ImageDataset, dataset_for
from cnndeploy.data.load import check_matches
from cnndeploy.data.types import normalise
from cnndeploy.runtime.classifier import Classifier


def evaluate_onnx(path: str | os.PathLike, *, dataset: str | None = None, data_dir: str | None = None,
                  batch_size: int = 256, threads: int | None = None,
                  ds: ImageDataset | None = None) -> dict[str, Any]:
    """Top-1 accuracy of the file on the whole test split (of `ds` where the caller loaded it)."""
    clf = Classifier(path, threads=threads)
    meta = clf.meta
    if ds is None:
        ds = dataset_for(meta, dataset=dataset, data_dir=data_dir)
    else:  # loaded for model.json: the file's own metadata must agree (a stale export would not)
        check_matches(ds, meta)
    correct = 0
    for start in range(0, len(ds.test_y), batch_size):
        x = normalise(ds.test_x[start:start + batch_size], meta["mean"], meta["std"])
        correct += int((clf.logits(x).argmax(1) == ds.test_y[start:start + batch_size]).sum())
    return {"test_accuracy": correct / len(ds.test_y), "n": len(ds.test_y), "dataset_source": ds.source,
            "model": meta["model"], "file": str(path)}
