"""`cnndeploy export --trt`: TensorRT engines from the exported ONNX files.

Written against the TensorRT 10 Python API (explicit batch, explicit quantization from QDQ
nodes, no calibrators). Not run in CI (no GPU there); tests are marked `trt` and skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cnndeploy.artifacts import lock
from cnndeploy.artifacts.files import ENGINE_RE, ENGINE_SOURCES, engine_name, spec  # noqa: F401 (ENGINE_RE: import path kept)
from cnndeploy.fileio import write_bytes_atomic
from cnndeploy.runtime.tensorrt import (MAX_BATCH, TensorRTError, TensorRTRunner,  # noqa: F401
                                        check_engine_file, check_input, require_tensorrt)


def _parse_onnx(trt, builder, logger, onnx_path: Path):
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT could not parse {onnx_path}: {errors}")
    return network


def build_engine(run_dir: str | os.PathLike, *, precision: str = "fp32", max_batch: int = MAX_BATCH,
                 workspace_gib: float = 2.0) -> Path:
    """Build RUN_DIR/model.<precision>.trt<version>.sm<cc>.engine from the matching ONNX file.

    The ONNX file each precision builds from is the table's ENGINE_SOURCES (int8: the QDQ file).
    """
    trt = require_tensorrt()
    run = Path(run_dir)
    if precision not in ENGINE_SOURCES:
        raise TensorRTError(f"engine precision {precision!r}: expected one of {', '.join(ENGINE_SOURCES)}")
    onnx_path = run / ENGINE_SOURCES[precision]
    if not onnx_path.is_file():
        raise TensorRTError(f"{onnx_path} not found; run '{spec(onnx_path.name).made_by}' first")
    with lock.writing(run, command="cnndeploy export --trt", what="RUN_DIR"):
        return _build_locked(trt, run, onnx_path, precision=precision, max_batch=max_batch,
                             workspace_gib=workspace_gib)


def _build_locked(trt, run: Path, onnx_path: Path, *, precision: str, max_batch: int,
                  workspace_gib: float) -> Path:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse_onnx(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)   # layers left unquantized may still run in fp16
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)   # scales come from the QDQ nodes, not a calibrator
    inp = network.get_input(0)
    _, c, h, w = inp.shape
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (1, c, h, w), (min(32, max_batch), c, h, w), (max_batch, c, h, w))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT failed to build an engine from {onnx_path} ({precision})")
    out = run / engine_name(precision, trt.__version__, torch.cuda.get_device_capability())
    write_bytes_atomic(out, bytes(serialized))
    return out


