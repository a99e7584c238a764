"""Resumable training state in one safetensors file: weights, optimizer, RNG, history.

Tensors go into the safetensors body; the rest (epoch, step, config, param groups, history)
is JSON in its metadata. No pickle, so `--resume` on a downloaded run is safe too.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from cnndeploy.errors import CheckpointError
from cnndeploy.models.weights import load_state_dict_checked, load_tensors, save_safetensors

FORMAT = "cnndeploy-checkpoint/1"


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    rng: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, pstate in opt["state"].items():
        for key, value in pstate.items():
            if not torch.is_tensor(value):
                raise TypeError(f"optimizer state {key} is not a tensor")  # SGD keeps only tensors
            tensors[f"optim.{pid}.{key}"] = value
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"format": FORMAT, "state": json.dumps({**state, "param_groups": opt["param_groups"]})}
    save_safetensors(path, tensors, meta)


def checkpoint_state(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON half of a checkpoint (epoch, step, config, history) without loading tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt or incomplete ({e}); expected a checkpoint "
                              "written by 'cnndeploy train'") from None
    return _state(meta, path)


def _state(meta: dict[str, str], path: str | os.PathLike) -> dict[str, Any]:
    """The JSON state from a checkpoint's safetensors metadata, checking its format tag."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (format {meta.get('format')!r})")
    try:
        return json.loads(meta["state"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt or incomplete ({e}); expected a checkpoint "
                              "written by 'cnndeploy train'") from None


def load_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore model and optimizer in place; return the RNG tensors and the JSON state."""
    tensors, meta = load_tensors(path)
    state = _state(meta, path)
    device = next(model.parameters()).device
    load_state_dict_checked(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                            str(path))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[key] = v.to(device)
    optimizer.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return rng, state
