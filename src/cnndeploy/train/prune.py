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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnndeploy.artifacts import files as layout
from cnndeploy.artifacts import lock, records
from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.records import PruneRecord
from cnndeploy.data import dataset_for
from cnndeploy.data.device import DeviceSplit
from cnndeploy.data.holdout import Holdout
from cnndeploy.errors import CnnDeployError
from cnndeploy.models import get_spec, weights
from cnndeploy.models.cost import count
from cnndeploy.runtime.accuracy import measure_accuracy
from cnndeploy.runtime.runners import torch_model_runner
from cnndeploy.train.fit import TrainConfig, train

log = logging.getLogger("cnndeploy")
METHODS = ("l1", "l2", "taylor")
NAMED = ("mnist", "cifar10")


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


def calibration_split(ds, card: ModelCard, n: int = 2048, seed: int = 0) -> DeviceSplit:
    """A fixed random subset of the training split (datasets read from folders are class-sorted)."""
    idx = torch.randperm(len(ds.train_y), generator=torch.Generator().manual_seed(seed))[:n].numpy()
    return DeviceSplit(ds.train_x[idx], ds.train_y[idx], mean=card.mean, std=card.std,
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


@dataclass(frozen=True)
class PruneConfig:
    """What `cnndeploy prune` runs with; recorded in prune.json beside the result."""
    amount: float = 0.5                 # fraction of the channels of every prunable group
    method: str = "l2"                  # channel importance: l1, l2 (magnitude) or taylor
    finetune_epochs: int | None = None  # None: 20% of the original run's epochs, at least 1
    round_to: int | None = 8            # keep channel counts multiples of this (None or 0: off)
    lr: float | None = None             # None: a quarter of the original run's peak lr
    precision: str | None = None        # fine-tune compute; None: the original run's
    distill: bool = False               # fine-tune against the unpruned model's outputs (KD)
    holdout: int | None = None          # validation images kept out of the fine-tune; None: the original's
    holdout_seed: int | None = None     # None: the original's

    def check(self) -> "PruneConfig":
        if not 0 < self.amount < 1:
            raise CnnDeployError(f"--amount {self.amount}: expected a fraction of channels in (0, 1)")
        if self.method not in METHODS:
            raise CnnDeployError(f"--method {self.method!r}: expected one of {', '.join(METHODS)}")
        # bool is an int: refuse it too, as JSON configs and library callers can pass one
        if self.finetune_epochs is not None and (type(self.finetune_epochs) is not int or self.finetune_epochs < 1):
            raise CnnDeployError(f"--finetune-epochs {self.finetune_epochs}: expected a positive integer")
        if self.round_to is not None and (type(self.round_to) is not int or self.round_to < 0):
            raise CnnDeployError(f"--round-to {self.round_to}: expected 0 (off) or a positive integer")
        return self


def prune_run(run_dir: str | os.PathLike, cfg: PruneConfig = PruneConfig(), *, out: str | None = None,
              data_dir: str | None = None, device: str = "auto", progress: bool = True) -> PruneRecord:
    """Prune RUN_DIR's model, fine-tune it into a new run directory, write its prune.json."""
    cfg.check()
    run = Path(run_dir)
    model, card = weights.load_run(run)
    original = _recorded_config(run)  # read before the slow work: a malformed metrics.json stops here
    out_dir = Path(out) if out else run.with_name(layout.pruned_run_name(run.name, cfg.amount))
    if out_dir.exists() and not out_dir.is_dir():
        raise CnnDeployError(f"--out {out_dir} is a file; expected a run directory")
    with lock.writing(out_dir, command="cnndeploy prune"):  # its fine-tune's train takes it again
        return _prune_into(run, out_dir, cfg, model, card, original, data_dir=data_dir, device=device,
                           progress=progress)


def _prune_into(run: Path, out_dir: Path, cfg: PruneConfig, model: nn.Module, card: ModelCard, original: dict,
                *, data_dir: str | None, device: str, progress: bool) -> PruneRecord:
    if (out_dir / layout.METRICS).exists() or (out_dir / layout.CHECKPOINT).exists():
        raise CnnDeployError(f"{out_dir} already holds a run; choose another --out (nothing was overwritten)")
    ds = dataset_for(card, data_dir=data_dir)
    holdout = Holdout(cfg.holdout if cfg.holdout is not None else original.get("holdout", 0),
                      cfg.holdout_seed if cfg.holdout_seed is not None else original.get("holdout_seed", 0))
    ds = holdout.without(ds)  # BN re-estimation and Taylor gradients never see the validation split
    dataset = card.dataset if card.dataset in NAMED else ds.path
    # the fine-tune reads the very files measured here, wherever dataset_for found them
    found_in = str(ds.path) if card.dataset in NAMED else data_dir
    shape = card.shape
    before = {**count(model, shape), "test_accuracy": _accuracy(model, card, ds)}
    calib = calibration_split(ds, card)
    prune_model(model, shape, amount=cfg.amount, method=cfg.method, round_to=cfg.round_to, calib=calib)
    recalibrate_bn(model, calib)
    pruned = {**count(model, shape), "test_accuracy": _accuracy(model, card, ds)}
    # the same formats as the command line's summary, which repeats these numbers
    log.info("pruned %s: MACs %.2fM -> %.2fM, params %.3fM -> %.3fM, test accuracy %.2f%% -> %.2f%% before "
             "fine-tune", card.model, before["macs"] / 1e6, pruned["macs"] / 1e6, before["params"] / 1e6,
             pruned["params"] / 1e6, 100 * before["test_accuracy"], 100 * pruned["test_accuracy"])

    recipe = get_spec(card.model).recipe(card.dataset)
    epochs = cfg.finetune_epochs if cfg.finetune_epochs is not None else default_finetune_epochs(
        original.get("epochs") or recipe.epochs)
    init = out_dir / layout.PRUNE_INIT
    train_cfg = TrainConfig(model=card.model, dataset=dataset, out=str(out_dir), epochs=epochs,
                            lr=cfg.lr or (original.get("lr") or recipe.lr) / 4,
                            batch_size=original.get("batch_size"), device=device, data_dir=found_in,
                            widths=model.widths(), init_weights=str(init),
                            precision=cfg.precision or original.get("precision", "auto"),
                            holdout=holdout.size, holdout_seed=holdout.seed,
                            teacher=str(run.resolve()) if cfg.distill else None)  # absolute: --resume elsewhere
    weights.save_weights(init, model)
    metrics = train(train_cfg, progress=progress)
    record = PruneRecord(
        source_run=str(run), amount=cfg.amount, method=cfg.method, round_to=cfg.round_to, finetune_epochs=epochs,
        finetune_lr=train_cfg.lr, finetune_precision=train_cfg.precision, finetune_teacher=train_cfg.teacher,
        before=before, pruned_before_finetune=pruned,
        after_finetune={**count(model, shape), "test_accuracy": metrics["test_accuracy"]},
        macs_reduction=round(before["macs"] / pruned["macs"], 3),
        params_reduction=round(before["params"] / pruned["params"], 3),
        widths=dataclasses.asdict(train_cfg)["widths"], config=dataclasses.asdict(cfg))
    record.write(out_dir)
    return record


def _recorded_config(run: Path) -> dict:
    """The original run's recorded epochs, lr, batch size and precision, where they have a usable type
    (the rest falls back to the recipe, as for a run without metrics.json)."""
    config = records.read_metrics(run).get("config", {})
    usable = {"epochs": int, "batch_size": int, "lr": (int, float), "precision": str, "holdout": int,
              "holdout_seed": int}
    return {k: v for k, v in config.items() if k in usable and isinstance(v, usable[k]) and not isinstance(v, bool)
            and (isinstance(v, str) or v > 0)}


def _accuracy(model: nn.Module, card: ModelCard, ds) -> float:
    """Test accuracy of the in-memory model through the one accuracy loop (reported, never a decision)."""
    return measure_accuracy(torch_model_runner(model.eval()), card, ds)["test_accuracy"]
