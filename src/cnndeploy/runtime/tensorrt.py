"""Running TensorRT engines: load checks and a runner on torch CUDA tensors.

Written against the TensorRT 10 Python API (name-based I/O tensors, `execute_async_v3`).
Engines are tied to the TensorRT version and the GPU's compute capability, so both are in the
file name (artifacts.files.engine_name) and checked on load. Not run in CI (no GPU there);
tests are marked `trt` and skip with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cnndeploy.artifacts.files import ENGINE_MAX_BATCH as MAX_BATCH
from cnndeploy.artifacts.files import ENGINE_RE
from cnndeploy.errors import CnnDeployError


class TensorRTError(CnnDeployError):
    """TensorRT or a GPU is missing, or an engine cannot be built or loaded."""


TENSORRT_PACKAGE = "no 'tensorrt' Python package (pip install 'cnndeploy[trt]')"
CUDA_GPU = "no CUDA GPU (torch sees none)"


def tensorrt_missing() -> list[str]:
    """Everything this machine lacks for TensorRT: naming only the first would send a user who
    installs the package straight into the next error."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        missing.append(TENSORRT_PACKAGE)
    if not torch.cuda.is_available():
        missing.append(CUDA_GPU)
    return missing


def missing_message(missing: list[str]) -> str:
    return f"TensorRT cannot run here: {', '.join(missing)}"


def require_tensorrt():
    """The tensorrt module, after checking for it and a CUDA GPU (one line names everything missing)."""
    missing = tensorrt_missing()
    if missing:
        raise TensorRTError(missing_message(missing))
    import tensorrt as trt
    return trt


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


