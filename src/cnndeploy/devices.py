"""Choosing the torch device from --device auto|cpu|cuda."""

from __future__ import annotations

import torch

from cnndeploy.errors import CnnDeployError

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CnnDeployError("--device cuda was asked for but torch sees no CUDA GPU "
                             f"(torch {torch.__version__}); use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise CnnDeployError(f"--device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)

