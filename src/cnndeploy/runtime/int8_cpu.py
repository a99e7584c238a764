"""INT8 files on CPUs whose 8-bit kernels saturate (x86 without VNNI): run them as written, not overflowed.

There, onnxruntime's integer kernels multiply u8 x s8 pairs into int16 (vpmaddubsw), which overflows for
full-range int8 weights: on LeNet-5 the fused kernels were 29% of the largest logit off the file's own
QDQ arithmetic and a point less accurate. 7-bit weights (|w| <= 64, quantize_file's reduce_range) cannot
overflow. A file with wider weights gets basic graph optimizations only: DequantizeLinear, the float
op and QuantizeLinear run as the graph says (exact, at float speed, with a warning).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cnndeploy import system

log = logging.getLogger("cnndeploy")

SAFE_INT8 = 64   # |int8 weight| <= 64: no pair of u8 x s8 products overflows int16
_warned: set[tuple] = set()
_verdicts: dict[tuple, bool] = {}   # by file version: a search opens the same file in many sessions


def _identity(path: Any) -> tuple:
    try:
        st = os.stat(path)
        return str(path), st.st_ino, st.st_mtime_ns, st.st_size   # atomic rewrites get a new inode
    except OSError:
        return (str(path),)


def overflows_here(path: Any) -> bool:
    """Whether the ONNX file at `path` has dequantized int8 weights beyond [-64, 64] and this CPU saturates."""
    if not isinstance(path, (str, os.PathLike)) or not system.cpu_int8_saturates():
        return False
    try:
        import onnx  # noqa: F401
    except ImportError:   # a runtime-only install (onnxruntime, numpy, pillow): the file cannot be inspected
        log.debug("onnx not installed: %s is not checked for int8 overflow on this CPU", path)
        return False
    key = _identity(path)
    if key not in _verdicts:
        _verdicts[key] = _wide_int8_weights(path)
    return _verdicts[key]


def _wide_int8_weights(path: Any) -> bool:
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception:   # not loadable here: the session that follows says what is wrong with it
        return False
    dequantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return any(i.name in dequantized and i.data_type == onnx.TensorProto.INT8
               and int(np.abs(numpy_helper.to_array(i).astype(np.int16)).max(initial=0)) > SAFE_INT8
               for i in graph.initializer)


def faithful(options: Any, path: Any, providers: Sequence[str] | None) -> bool:
    """Set basic optimizations on onnxruntime `options` where the file would overflow on this CPU's
    provider; return whether it did (warning once per file)."""
    if providers and "CPUExecutionProvider" not in providers[:1]:
        return False   # a GPU provider runs the integers in int32
    if not overflows_here(path):
        return False
    from cnndeploy.runtime.onnxruntime_import import onnxruntime

    options.graph_optimization_level = onnxruntime().GraphOptimizationLevel.ORT_ENABLE_BASIC
    key = _identity(path)
    if key not in _warned:   # once per file version, not per session opened on it
        _warned.add(key)
        log.warning("%s: its full-range int8 weights overflow this CPU's 8-bit kernels (x86 without VNNI); "
                    "running the QDQ graph unfused: exact, but at float speed (quantize here, or with "
                    "--reduce-range on, for 7-bit weights)", Path(str(path)).name)
    return True
