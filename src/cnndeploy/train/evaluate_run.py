"""`cnndeploy eval RUN_DIR`: test accuracy re-measured from the saved files alone."""

from __future__ import annotations

import os
from typing import Any

from cnndeploy.data import dataset_for
from cnndeploy.data.device import DeviceSplit
from cnndeploy.rundir import load_run
from cnndeploy.devices import pick_device
from cnndeploy.train.loop import evaluate


def evaluate_run(run_dir: str | os.PathLike, *, dataset: str | None = None,
                 data_dir: str | None = None, device: str = "auto") -> dict[str, Any]:
    dev = pick_device(device)
    model, meta = load_run(run_dir, dev)
    ds = dataset_for(meta, dataset=dataset, data_dir=data_dir)
    split = DeviceSplit(ds.test_x, ds.test_y, mean=meta["mean"], std=meta["std"], device=dev)
    result = evaluate(model, split)
    return {"test_accuracy": result["accuracy"], "test_loss": result["loss"], "n": result["n"],
            "dataset_source": ds.source, "model": meta["model"], "run_dir": str(run_dir)}
