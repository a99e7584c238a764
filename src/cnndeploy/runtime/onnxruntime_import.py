"""onnxruntime comes in two flavours (onnxruntime, onnxruntime-gpu) that install the same module."""

from __future__ import annotations

from types import ModuleType

from cnndeploy.errors import CnnDeployError
from cnndeploy.runtime.optional import require

INSTALL_HINT = ("pip install 'cnndeploy[cpu]' (onnxruntime) or 'cnndeploy[gpu]' (onnxruntime-gpu, "
                "CUDA); install one of them, not both: they provide the same module")


class OnnxRuntimeMissing(CnnDeployError):
    """Neither onnxruntime nor onnxruntime-gpu is installed."""


def onnxruntime() -> ModuleType:
    """The onnxruntime module, or one error that names both extras."""
    return require("onnxruntime", OnnxRuntimeMissing, INSTALL_HINT)
