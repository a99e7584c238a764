"""TensorRT engines from the exported ONNX files, and a runner that uses torch CUDA tensors.

Written against the TensorRT 10 Python API (name-based I/O tensors, `execute_async_v3`,
explicit quantization from QDQ nodes, no calibrators). Engines are tied to the TensorRT
version and the GPU's compute capability, so both are in the file name and checked on load.

Not run in CI (no GPU there); tests are marked `trt` and skip with the reason.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from cnndeploy.errors import CnnDeployError
from cnndeploy.fileio import write_bytes_atomic

log = logging.getLogger("cnndeploy")

MAX_BATCH = 256
ENGINE_RE = re.compile(r"\.(?P<precision>fp32|fp16|int8)\.trt(?P<trt>[\d.]+)\.sm(?P<sm>\d+)\.engine$")


class TensorRTError(CnnDeployError):
    """TensorRT or a GPU is missing, or an engine cannot be built or loaded."""


def require_tensorrt():
    """The tensorrt module, after checking for it and a CUDA GPU (one line says which is missing)."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTError("--trt needs the 'tensorrt' Python package (pip install 'cnndeploy[trt]'), "
                            "which is not installed") from None
    if not torch.cuda.is_available():
        raise TensorRTError("--trt needs a CUDA GPU, and torch sees none")
    return trt


def engine_name(precision: str, trt_version: str, capability: tuple[int, int]) -> str:
    return f"model.{precision}.trt{trt_version}.sm{capability[0]}{capability[1]}.engine"


MIN_ENGINE_BYTES = 1024  # an empty file, a Git-LFS pointer or an HTML page is no engine


def check_engine_file(path: Path, trt_version: str, capability: tuple[int, int]) -> None:
    """Refuse, before TensorRT reads it, an engine named for another TensorRT or GPU, or a stub file.

    Anything subtler (a truncated body, a renamed file) is left to TensorRT's deserializer,
    whose None is reported with the same "rebuild the engine" advice.
    """
    found = ENGINE_RE.search(path.name)
    here = (trt_version, f"{capability[0]}{capability[1]}")
    if found and (found["trt"], found["sm"]) != here:
        raise TensorRTError(f"{path.name} was built for TensorRT {found['trt']} on sm{found['sm']}; this "
                            f"machine has TensorRT {here[0]} on sm{here[1]}: rebuild the engine "
                            "(cnndeploy export RUN_DIR --trt)")
    if not path.is_file():
        raise TensorRTError(f"engine not found: {path} (build one with cnndeploy export RUN_DIR --trt)")
    size = path.stat().st_size
    if size < MIN_ENGINE_BYTES:
        raise TensorRTError(f"{path} is truncated or not an engine ({size} bytes): rebuild the engine "
                            "(cnndeploy export RUN_DIR --trt)")


def check_input(shape: tuple[int, ...], dtype: str, expected: tuple[int, ...], max_batch: int) -> None:
    """An engine's input must be float32 [N, C, H, W] with 1 <= N <= its profile's maximum."""
    want = f"float32 [N, {', '.join(map(str, expected))}] with N from 1 to {max_batch}"
    if dtype.replace("torch.", "") != "float32" or len(shape) != 4 or tuple(shape[1:]) != tuple(expected):
        raise TensorRTError(f"the engine takes {want}; got {dtype.replace('torch.', '')} {list(shape)}")
    if not 1 <= shape[0] <= max_batch:
        raise TensorRTError(f"a batch of {shape[0]} is outside the engine's profile: it takes {want}; "
                            "split the batch, or rebuild the engine for larger batches")


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

    fp32/fp16 build from model.onnx; int8 builds from model.int8-trt.onnx (explicit QDQ).
    """
    trt = require_tensorrt()
    run = Path(run_dir)
    onnx_path = run / ("model.int8-trt.onnx" if precision == "int8" else "model.onnx")
    if not onnx_path.is_file():
        hint = "cnndeploy quant RUN_DIR --target tensorrt" if precision == "int8" else "cnndeploy export RUN_DIR --onnx"
        raise TensorRTError(f"{onnx_path} not found; run '{hint}' first")
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


class TensorRTRunner:
    """Runs a serialized engine on torch CUDA tensors (float32 NCHW in, logits out)."""

    def __init__(self, engine_path: str | os.PathLike) -> None:
        trt = require_tensorrt()
        path = Path(engine_path)
        check_engine_file(path, trt.__version__, torch.cuda.get_device_capability())
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise TensorRTError(f"{path} is truncated or was built by another TensorRT/GPU: rebuild the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.chw = tuple(self.engine.get_tensor_shape(self.input))[1:]
        try:
            self.max_batch = int(self.engine.get_tensor_profile_shape(self.input, 0)[2][0])
        except (AttributeError, IndexError, TypeError, RuntimeError):
            self.max_batch = MAX_BATCH  # what build_engine sets

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_input(tuple(x.shape), str(x.dtype), self.chw, self.max_batch)
        x = x.to("cuda").contiguous()
        self.context.set_input_shape(self.input, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), device="cuda",
                          dtype=torch.float32)
        self.context.set_tensor_address(self.input, x.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise TensorRTError("TensorRT execution failed")
        return out


def evaluate_engine(engine_path: str | os.PathLike, *, run_dir: str | os.PathLike | None = None,
                    dataset: str | None = None, data_dir: str | None = None, batch_size: int = 256) -> dict:
    """Test accuracy of a TensorRT engine; preprocessing comes from the model.json beside it."""
    import numpy as np

    from cnndeploy.data import dataset_for
    from cnndeploy.rundir import read_model_json

    path = Path(engine_path)
    meta = read_model_json(Path(run_dir) if run_dir else path.parent)
    runner = TensorRTRunner(path)
    ds = dataset_for(meta, dataset=dataset, data_dir=data_dir)
    mean = torch.tensor(meta["mean"], device="cuda").view(1, -1, 1, 1)
    std = torch.tensor(meta["std"], device="cuda").view(1, -1, 1, 1)
    correct, step = 0, min(batch_size, runner.max_batch)
    for start in range(0, len(ds.test_y), step):
        x = torch.from_numpy(np.ascontiguousarray(ds.test_x[start:start + step])).cuda()
        logits = runner((x.float() / 255 - mean) / std)
        y = torch.from_numpy(ds.test_y[start:start + len(x)]).cuda()
        correct += int((logits.argmax(1) == y).sum())
    return {"test_accuracy": correct / len(ds.test_y), "n": len(ds.test_y), "dataset_source": ds.source,
            "model": meta["model"], "file": str(path)}
