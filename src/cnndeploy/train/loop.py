"""One `train_one_epoch()` and one `evaluate()`, shared by training, pruning fine-tune and QAT."""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from cnndeploy.data.device import Augment, DeviceSplit, ShardedSplit
from cnndeploy.errors import TrainingError
from cnndeploy.train.ema import ModelEma


PRECISIONS = ("auto", "fp32", "bf16")


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    """`auto` is bf16 autocast on CUDA and fp32 on CPU: there bf16 is opt-in, since it pays only on
    CPUs with AVX512-BF16 or AMX (2.3x on this repo's Zen 4 runner for the ResNets, BENCHMARKS.md) and
    makes CPU runs no longer bit-reproducible across machines."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast_for(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast where `uses_bf16` says so (bf16 needs no loss scaling), else full fp32."""
    if uses_bf16(device, precision):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# Hinton et al.'s soft-target loss; T and weight as commonly used for CIFAR-sized students.
DISTILL_TEMPERATURE = 4.0
DISTILL_WEIGHT = 0.9


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      hard_loss: torch.Tensor) -> torch.Tensor:
    """KL between temperature-softened teacher and student outputs (scaled by T^2 so its gradients
    keep their size), blended with the ordinary label loss."""
    t = DISTILL_TEMPERATURE
    soft = nn.functional.kl_div(nn.functional.log_softmax(student_logits.float() / t, dim=1),
                                nn.functional.log_softmax(teacher_logits.float() / t, dim=1),
                                reduction="batchmean", log_target=True) * (t * t)
    return DISTILL_WEIGHT * soft + (1 - DISTILL_WEIGHT) * hard_loss


def _check_finite(loss_sum: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss_sum):
        raise TrainingError(f"training loss became {loss_sum.item()} at epoch {epoch}, step {step}: "
                            "training stopped and the last good checkpoint was kept; "
                            "try a lower --lr")


def train_one_epoch(model: nn.Module, split: DeviceSplit | ShardedSplit, optimizer: torch.optim.Optimizer, *,
                    lr_at: Callable[[int], float], step: int, epoch: int, batch_size: int,
                    augment: Augment, generator: torch.Generator, loss_fn: nn.Module,
                    precision: str = "auto", teacher: nn.Module | None = None,
                    ema: ModelEma | None = None, progress: bool = True) -> dict:
    """Train for one pass over `split`; returns loss, accuracy, steps and timings.

    With a `teacher` (in eval mode) the loss is `distillation_loss` against its outputs. An `ema`
    follows the weights after every optimizer step.

    `batch_size` is the global batch: a ShardedSplit yields this rank's share of each one, and
    the loss and accuracy returned are then this rank's.
    """
    model.train()
    device = split.device
    # A GPU step should not wait for the host, so check the loss every few steps there.
    check_every = 1 if device.type == "cpu" else 50
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, data_s, compute_s = 0, 0.0, 0.0
    bar = tqdm(total=split.num_batches(batch_size, drop_last=True), desc=f"epoch {epoch}",
               leave=False, disable=None if progress else True, unit="batch")
    batches = split.batches(batch_size, generator=generator, augment=augment, drop_last=True)
    start = time.perf_counter()
    for x, y in batches:
        t0 = time.perf_counter()
        data_s += t0 - start
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast_for(device, precision):
            logits = model(x)
            loss = loss_fn(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(x)
                loss = distillation_loss(logits, target, loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().float() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        step += 1
        if ema is not None:
            ema.update(step)
        if step % check_every == 0:
            _check_finite(loss_sum, epoch, step)
        start = time.perf_counter()
        compute_s += start - t0
        bar.update()
    bar.close()
    _check_finite(loss_sum, epoch, step)
    return {"train_loss": loss_sum.item() / max(seen, 1), "train_accuracy": correct.item() / max(seen, 1),
            "steps": step, "lr": lr_at(step - 1), "data_seconds": data_s, "compute_seconds": compute_s}


@torch.no_grad()
def evaluate(model: nn.Module, split: DeviceSplit, *, batch_size: int = 1000,
             loss_fn: nn.Module | None = None) -> dict:
    """Loss and top-1 accuracy over the whole split (accuracy as a fraction in [0, 1]).

    Always full fp32, whatever the training precision: the accuracy reported is the exported model's.
    """
    model.eval()
    device = split.x.device
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for x, y in split.batches(batch_size):
        logits = model(x)
        loss_sum += loss_fn(logits.float(), y) * len(y)
        correct += (logits.argmax(1) == y).sum()
    n = len(split)
    return {"loss": loss_sum.item() / n, "accuracy": correct.item() / n, "n": n}
