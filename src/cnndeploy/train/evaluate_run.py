"""`cnndeploy eval RUN_DIR`: test accuracy re-measured from the saved files alone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cnndeploy.data import load_dataset
from cnndeploy.data.device import DeviceSplit
from cnndeploy.errors import DatasetError
from cnndeploy.rundir import load_run
from cnndeploy.train.fit import pick_device
from cnndeploy.train.loop import evaluate


def evaluate_run(run_dir: str | os.PathLike, *, dataset: str | None = None,
                 data_dir: str | None = None, device: str = "auto") -> dict[str, Any]:
    dev = pick_device(device)
    model, meta = load_run(run_dir, dev)
    name = dataset or (meta["dataset"] if meta["dataset"] in ("mnist", "cifar10")
                       else meta.get("dataset_path", meta["dataset"]))
    ds = load_dataset(name, data_dir=data_dir, image_size=meta["height"])
    if ds.classes != meta["classes"] or (ds.channels, ds.height, ds.width) != (
            meta["channels"], meta["height"], meta["width"]):
        raise DatasetError(f"{ds.path} does not match the model in {Path(run_dir)}: classes "
                           f"{ds.classes} {ds.channels}x{ds.height}x{ds.width} vs "
                           f"{meta['classes']} {meta['channels']}x{meta['height']}x{meta['width']}")
    split = DeviceSplit(ds.test_x, ds.test_y, mean=meta["mean"], std=meta["std"], device=dev)
    result = evaluate(model, split)
    return {"test_accuracy": result["accuracy"], "test_loss": result["loss"], "n": result["n"],
            "dataset_source": ds.source, "model": meta["model"], "run_dir": str(run_dir)}
