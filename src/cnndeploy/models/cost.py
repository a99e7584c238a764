"""Parameters and multiply-accumulates per image: what bench, prune and the demo report."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from cnndeploy.artifacts.files import WEIGHTS


def count(model: nn.Module, shape: tuple[int, int, int]) -> dict[str, int]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *shape))
    return {"macs": int(macs), "params": int(params)}


def run_cost(run_dir: str | os.PathLike) -> dict[str, int | None]:
    """Parameters and MACs per image of a run directory's network (None without weights)."""
    from cnndeploy.models.weights import load_run

    run = Path(run_dir)
    if not (run / WEIGHTS).is_file():
        return {"params": None, "macs": None}
    model, card = load_run(run)
    return count(model, card.shape)
