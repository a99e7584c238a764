"""Optional runtimes (onnxruntime, openvino): imported when first needed, or one error saying how to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from cnndeploy.errors import CnnDeployError


def require(module: str, missing: type[CnnDeployError], install_hint: str) -> ModuleType:
    """`module`, imported; `missing` naming the install command where it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing(f"this needs {module}, which is not installed: {install_hint}") from None
