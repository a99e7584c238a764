"""`cnndeploy prune RUN_DIR --amount 0.5`: structured pruning with Torch-Pruning, then fine-tune.

DepGraph (Torch-Pruning) removes whole channels and keeps coupled layers consistent: the
residual stream of a ResNet stage, the BN after a conv, the first linear layer after the
flatten. The classifier keeps its outputs. Fine-tuning reuses `train()`, so the result is an
ordinary run directory whose model.json records the pruned widths.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnndeploy import rundir
from cnndeploy.data import dataset_for
from cnndeploy.data.device import DeviceSplit
from cnndeploy.errors import CnnDeployError
from cnndeploy.fileio import write_json_atomic
from cnndeploy.models import get_spec
from cnndeploy.train.fit import TrainConfig, train
from cnndeploy.train.loop import evaluate

log = logging.getLogger("cnndeploy")
METHODS = ("l1", "l2", "taylor")
NAMED = ("mnist", "cifar10")


def count(model: nn.Module, shape: tuple[int, int, int]) -> dict[str, int]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *shape))
    return {"macs": int(macs), "params": int(params)}


def run_cost(run_dir: str | os.PathLike) -> dict[str, int | None]:
    """Parameters and multiply-accumulates per image of a run directory's network (None without weights)."""
    run = Path(run_dir)
    if not (run / rundir.WEIGHTS).is_file():
        return {"params": None, "macs": None}
    model, meta = rundir.load_run(run)
    return count(model, (meta["channels"], meta["height"], meta["width"]))


def _importance(method: str):
    import torch_pruning as tp

    if method == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if method == "l1" else 2)


def _taylor_gradients(model: nn.Module, split: DeviceSplit, batches: int = 8) -> None:
    """Taylor importance needs d(loss)/d(weight): accumulate it over a few training batches."""
    model.zero_grad()
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    for i, (x, y) in enumerate(split.batches(128, generator=gen)):
        if i == batches:
            break
        loss_fn(model(x), y).backward()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, split: DeviceSplit, batch_size: int = 256) -> None:
    """Re-estimate BatchNorm running statistics of a freshly pruned model on training images.

    Removing channels changes every downstream activation distribution, so the old running
    means/variances are wrong until fine-tuning replaces them; a forward pass over a few
    thousand training images (cumulative average, no gradient) fixes them first.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for x, _ in split.batches(batch_size):
        model(x)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()


def calibration_split(ds, meta: dict, n: int = 2048, seed: int = 0) -> DeviceSplit:
    """A fixed random subset of the training split (datasets read from folders are class-sorted)."""
    idx = torch.randperm(len(ds.train_y), generator=torch.Generator().manual_seed(seed))[:n].numpy()
    return DeviceSplit(ds.train_x[idx], ds.train_y[idx], mean=meta["mean"], std=meta["std"],
                       device=torch.device("cpu"))


def prune_model(model: nn.Module, shape: tuple[int, int, int], *, amount: float, method: str,
                round_to: int | None, calib: DeviceSplit | None = None) -> nn.Module:
    """Remove `amount` of the channels of every prunable group, in place."""
    import torch_pruning as tp

    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    model.eval()
    pruner = tp.pruner.MetaPruner(model, torch.zeros(1, *shape), importance=_importance(method),
                                  pruning_ratio=amount, ignored_layers=[classifier],
                                  round_to=round_to or None)
    if method == "taylor":
        _taylor_gradients(model, calib)
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def default_finetune_epochs(trained_epochs: int) -> int:
    """At most 20% of the original training (the budget the accuracy targets are stated for), at least 1."""
    return max(1, trained_epochs // 5)


def _default_out(run: Path, amount: float) -> Path:
    return run.with_name(f"{run.name}-pruned{round(100 * amount)}")


def prune_run(run_dir: str | os.PathLike, *, amount: float, method: str = "l2",
              finetune_epochs: int | None = None, round_to: int | None = 8, out: str | None = None,
              lr: float | None = None, data_dir: str | None = None, device: str = "auto",
              precision: str | None = None, distill: bool = False, progress: bool = True) -> dict[str, Any]:
    if not 0 < amount < 1:
        raise CnnDeployError(f"--amount {amount}: expected a fraction of channels in (0, 1)")
    if method not in METHODS:
        raise CnnDeployError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    run = Path(run_dir)
    model, meta = rundir.load_run(run)
    out_dir = Path(out) if out else _default_out(run, amount)
    if (out_dir / rundir.METRICS).exists() or (out_dir / rundir.CHECKPOINT).exists():
        raise CnnDeployError(f"{out_dir} already holds a run; choose another --out (nothing was overwritten)")
    ds = dataset_for(meta, data_dir=data_dir)
    dataset = meta["dataset"] if meta["dataset"] in NAMED else ds.path
    shape = (meta["channels"], meta["height"], meta["width"])
    test = DeviceSplit(ds.test_x, ds.test_y, mean=meta["mean"], std=meta["std"], device=torch.device("cpu"))
    before = {**count(model, shape), "test_accuracy": evaluate(model, test)["accuracy"]}
    calib = calibration_split(ds, meta)
    prune_model(model, shape, amount=amount, method=method, round_to=round_to, calib=calib)
    recalibrate_bn(model, calib)
    pruned = {**count(model, shape), "test_accuracy": evaluate(model, test)["accuracy"]}
    log.info("pruned %s: MACs %.1fM -> %.1fM, params %.2fM -> %.2fM, accuracy %.4f -> %.4f before fine-tune",
             meta["model"], before["macs"] / 1e6, pruned["macs"] / 1e6, before["params"] / 1e6,
             pruned["params"] / 1e6, before["test_accuracy"], pruned["test_accuracy"])

    original = rundir.read_json_if_exists(run / rundir.METRICS).get("config", {})
    epochs = finetune_epochs if finetune_epochs is not None else default_finetune_epochs(
        original.get("epochs") or get_spec(meta["model"]).recipe(meta["dataset"]).epochs)
    recipe_lr = original.get("lr") or get_spec(meta["model"]).recipe(meta["dataset"]).lr
    init = out_dir / "pruned-init.safetensors"
    cfg = TrainConfig(model=meta["model"], dataset=dataset, out=str(out_dir), epochs=epochs,
                      lr=lr or recipe_lr / 4, batch_size=original.get("batch_size"), device=device,
                      data_dir=data_dir, widths=model.widths(), init_weights=str(init),
                      precision=precision or original.get("precision", "auto"),
                      teacher=str(run.resolve()) if distill else None)  # absolute: --resume elsewhere
    rundir.save_weights(init, model)
    metrics = train(cfg, progress=progress)
    report = {"source_run": str(run), "amount": amount, "method": method, "round_to": round_to,
              "finetune_epochs": epochs, "finetune_lr": cfg.lr, "finetune_precision": cfg.precision,
              "finetune_teacher": cfg.teacher,
              "before": before,
              "pruned_before_finetune": pruned, "after_finetune": {**count(model, shape),
                                                                   "test_accuracy": metrics["test_accuracy"]},
              "macs_reduction": round(before["macs"] / pruned["macs"], 3),
              "params_reduction": round(before["params"] / pruned["params"], 3),
              "widths": dataclasses.asdict(cfg)["widths"]}
    write_json_atomic(out_dir / "prune.json", report)
    return report
