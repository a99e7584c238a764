"""Weights of a run directory: safetensors only (never a pickle), checked against model.json.

Everything here reads files a user may hand us, so every failure names the file and what was
expected.
"""

from __future__ import annotations

import os
import re
from contextlib import nullcontext as _nullcontext
from pathlib import Path

import torch
from torch import nn

from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.files import MODEL_JSON, WEIGHTS
from cnndeploy.errors import CheckpointError
from cnndeploy.fileio import DISK_ERRNOS, atomic_path, write_error


def save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                     metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file through atomic_path; its I/O errors (a full disk) become WriteError."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as e:  # the Rust writer reports ENOSPC as "... (os error 28)"
            code = re.search(r"os error (\d+)", str(e))
            if code and int(code[1]) in DISK_ERRNOS:
                raise write_error(Path(path), OSError(int(code[1]), os.strerror(int(code[1])))) from None
            raise


def save_weights(path: str | os.PathLike, model: nn.Module, metadata: dict[str, str] | None = None) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_safetensors(path, state, metadata)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file, with one clear error if it is broken."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights not found: {p} (expected a safetensors file)")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{p} is corrupt or incomplete ({e}); expected a safetensors file "
                              "written by cnndeploy") from None


SHOWN_KEYS = 5      # a hostile file can hold tens of thousands of keys: name a few, count the rest


def _summary(what: str, items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN_KEYS])
    more = f", ... ({len(items)} in all)" if len(items) > SHOWN_KEYS else ""
    return f"{what} [{shown}{more}]" if more else f"{what} {items}"


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict, but naming the missing, unexpected and mis-shaped keys (a few, and a count)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or shapes:
        parts = [_summary("missing keys", missing) if missing else "",
                 _summary("unexpected keys", extra) if extra else "",
                 _summary("mis-shaped", shapes) if shapes else ""]
        raise CheckpointError(f"{where} does not match the architecture in {MODEL_JSON}: "
                              + "; ".join(p for p in parts if p))
    model.load_state_dict(state)


def build_from_card(card: ModelCard, where: str, *, weights_bytes: int | None = None) -> nn.Module:
    """The model `card` describes; with `weights_bytes`, refused first if its parameters cannot fit.

    The widths come from a file a user may hand us: the model is first built on the meta device
    (shapes only, nothing allocated) to count its parameters, so absurd widths are refused
    before any memory is spent on them.
    """
    from cnndeploy.models.registry import create_model

    def build(device: str | None) -> nn.Module:
        try:
            with torch.device(device) if device else _nullcontext():
                return create_model(card.model, card.num_classes, card.channels, card.height, card.width,
                                    **card.widths)
        # NotImplementedError: an op with no meta-device kernel while the model is built on "meta"
        except (KeyError, ValueError, TypeError, RuntimeError, NotImplementedError) as e:
            msg = str(e.args[0] if e.args else e).splitlines()[0]
            raise CheckpointError(f"{where}: cannot build the model it describes ({msg})") from None

    if weights_bytes is not None:
        params = sum(p.numel() for p in build("meta").parameters())
        # 1 byte a parameter leaves room for any dtype we write (fp32, fp16, int8) plus headers
        if params > max(weights_bytes, MIN_WEIGHT_BYTES):
            raise CheckpointError(f"{where}: the widths it records describe {params:,} parameters, far "
                                  f"more than its weights file holds ({weights_bytes:,} bytes); refused "
                                  "before building it")
    return build(None)


MIN_WEIGHT_BYTES = 1 << 20   # below this, any model is cheap to build: let the key check speak


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the model of a run directory from model.json + model.safetensors alone."""
    run = Path(run_dir)
    if run.is_file():
        raise CheckpointError(f"{run} is a file; expected a run directory made by 'cnndeploy train' "
                              "(model.json + model.safetensors). PyTorch pickles (.pt, .pth, .bin) are "
                              "never loaded: unpickling a file can run code")
    if not run.is_dir():
        raise CheckpointError(f"run directory not found: {run} (expected a folder made by "
                              "'cnndeploy train')")
    card = ModelCard.read(run)
    weights_path = run / WEIGHTS
    size = weights_path.stat().st_size if weights_path.is_file() else None
    model = build_from_card(card, str(run / MODEL_JSON), weights_bytes=size)
    state, _ = load_tensors(run / WEIGHTS)
    load_state_dict_checked(model, state, str(run / WEIGHTS))
    return model.to(device).eval(), card


def card_for(name: str, model: nn.Module, dataset_meta: dict, **extra) -> ModelCard:
    """The ModelCard of a freshly built or trained model: its actual widths + the data's contract."""
    return ModelCard.from_json({"model": name, "widths": model.widths(), **dataset_meta, **extra},
                               f"the {name} model being written")
