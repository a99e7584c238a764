"""Resumable training state in one safetensors file: weights, optimizer, RNG, history.

Tensors go into the safetensors body; the rest (epoch, step, config, param groups, history)
is JSON in its metadata. No pickle, so `--resume` on a downloaded run is safe too.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import torch
from torch import nn

from cnndeploy.errors import CheckpointError
from cnndeploy.models.weights import load_state_dict_checked, load_tensors, save_safetensors

FORMAT = "cnndeploy-checkpoint/1"


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    rng: dict[str, torch.Tensor], state: dict[str, Any], ema: nn.Module | None = None) -> None:
    """`model` is the raw (trained) weights; `ema`, when given, the moving average of them."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
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
        state = json.loads(meta["state"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt or incomplete ({e}); expected a checkpoint "
                              "written by 'cnndeploy train'") from None
    except RecursionError:
        raise CheckpointError(f"{path} is corrupt or incomplete (its JSON state is nested too deep); "
                              "expected a checkpoint written by 'cnndeploy train'") from None
    check_state(state, path)
    return state


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# What save_checkpoint writes besides `config` (checked by the trainer against TrainConfig).
_STATE_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "epoch": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "step": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "history": ("a list of objects", lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v)),
    "seconds_in_epochs": ("a number", _is_number),
    "config": ("an object", lambda v: isinstance(v, dict)),
    "param_groups": ("a list of objects", lambda v: isinstance(v, list) and bool(v)
                     and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                             and all(_is_int(i) for i in g["params"]) for g in v)),
    "data": ("an object with source, train_images, test_images and classes",
             lambda v: isinstance(v, dict) and isinstance(v.get("source"), str)
             and _is_int(v.get("train_images")) and _is_int(v.get("test_images"))
             and isinstance(v.get("classes"), list)),
    "device_type": ("a string", lambda v: isinstance(v, str)),
}


def check_state(state: Any, path: str | os.PathLike) -> None:
    """The JSON state must have the shape save_checkpoint gives it; one line naming the field if not."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: malformed checkpoint state (expected a JSON object, got "
                              f"{type(state).__name__})")
    for key in ("epoch", "step", "history", "param_groups"):
        if key not in state:
            raise CheckpointError(f"{path}: malformed checkpoint state (field {key!r} is missing)")
    for key, value in state.items():
        if key in _STATE_FIELDS and not _STATE_FIELDS[key][1](value):
            raise CheckpointError(f"{path}: malformed checkpoint state (field {key!r} must be "
                                  f"{_STATE_FIELDS[key][0]}, got {_brief(value)})")


def _brief(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (int, float, str, bool)) or value is None else ""
    return f"{type(value).__name__} {text[:40]}".strip()


def load_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    ema: nn.Module | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore model, optimizer and (when given) the weights' moving average in place; return the
    RNG tensors and the JSON state. A run with an average must find one of the same architecture."""
    tensors, meta = load_tensors(path)
    state = _state(meta, path)
    device = next(model.parameters()).device
    load_state_dict_checked(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                            str(path))
    averaged = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    if ema is not None and not averaged:
        raise CheckpointError(f"{path}: malformed checkpoint state (the run averages its weights (ema) "
                              "but the checkpoint holds no ema.* tensors)")
    if ema is None and averaged:
        raise CheckpointError(f"{path}: malformed checkpoint state (it holds ema.* tensors but the run's "
                              "config has ema 0)")
    if ema is not None:
        load_state_dict_checked(ema, averaged, f"{path} (ema.*)")
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                opt_state.setdefault(int(pid), {})[key] = v.to(device)
        optimizer.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    except (ValueError, KeyError, TypeError, IndexError) as e:  # torch's own checks of the groups
        msg = str(e.args[0] if e.args else e).splitlines()[0][:200]
        raise CheckpointError(f"{path}: malformed checkpoint state (optimizer state: {msg})") from None
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return rng, state
