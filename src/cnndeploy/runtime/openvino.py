"""OpenVINO on the CPU: cnndeploy's ONNX files read directly, behind onnxruntime's session interface.

`OpenVINOSession` answers the few calls `SessionRunner` and `Classifier` make of an onnxruntime
session, so both run OpenVINO unchanged. Two traps are avoided on purpose:

- OpenVINO computes an FP32 model in bf16 on CPUs with AVX512-BF16 or AMX unless told otherwise,
  so every compile sets `INFERENCE_PRECISION_HINT` (f32, or bf16 when bf16 is the row asked for).
  INT8 (QDQ) files keep their int8 kernels under the f32 hint: it governs the unquantised layers.
- A dynamic batch axis costs per call on small models (0.36x on LeNet-5 at batch 1), so a batch
  size that will be called repeatedly can get a model reshaped to it; `prepare` measures both
  shapes and keeps the faster, and `batch_shape` says which one runs.

Compiled models are cached per (file, batch size, precision, threads) for the whole process, so
a bench, the demo or a second `Classifier` on the same file does not compile again. Needs
numpy and openvino only (no torch).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from cnndeploy.errors import CnnDeployError
from cnndeploy.runtime.classifier import ModelFileError, SessionRunner
from cnndeploy.runtime.optional import require

INSTALL_HINT = "pip install 'cnndeploy[openvino]'"
HINTS = {"fp32": "f32", "bf16": "bf16"}   # a row's compute precision -> INFERENCE_PRECISION_HINT
# One stream using every thread: the callers here infer synchronously, one request at a time.
PERFORMANCE_HINT = "LATENCY"
_MATH_LAYERS = ("Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution")
CHOICE_SECONDS = 0.2       # time per shape when `prepare` measures static against dynamic

_core: Any = None
_cache: dict[tuple, Any] = {}
cache_stats: Counter = Counter()   # "compiles" and "hits": what the cache saved (tests read it)


class OpenVINOMissing(CnnDeployError):
    """openvino is not installed."""


def openvino() -> ModuleType:
    """The openvino module, or one error that says how to install it."""
    return require("openvino", OpenVINOMissing, INSTALL_HINT)


def version() -> str | None:
    """OpenVINO's own build string (openvino.get_version()), None where it is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov.get_version()


def core() -> Any:
    global _core
    if _core is None:
        _core = openvino().Core()
    return _core


def clear_cache() -> None:
    _cache.clear()
    cache_stats.clear()


def _read(path: Path) -> Any:
    """The file through OpenVINO's ONNX reader only: `Core.read_model` would hand a file the ONNX
    reader refuses to every other installed frontend (TensorFlow, PaddlePaddle, PyTorch, ...)."""
    openvino()
    from openvino.frontend import FrontEndManager

    try:
        onnx = FrontEndManager().load_by_framework("onnx")
        return onnx.convert(onnx.load(str(path)))
    except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own for bad files
        raise ModelFileError(f"{path} is not a model OpenVINO can read "
                             f"({str(e).strip().splitlines()[-1][:200] if str(e) else type(e).__name__})") from None


def compiled_model(path: str | os.PathLike, *, batch: int | None, precision: str = "fp32",
                   threads: int | None = None) -> Any:
    """The CPU-compiled model of `path` (reshaped to a static `batch` unless None), from the cache
    when this file (same size and mtime) was compiled with these settings before."""
    if precision not in HINTS:
        raise CnnDeployError(f"OpenVINO precision {precision!r}: expected one of {', '.join(HINTS)}")
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, batch, precision, threads)
    if key in _cache:
        cache_stats["hits"] += 1
        return _cache[key]
    model = _read(path)
    if batch is not None:
        shape = model.input(0).get_partial_shape()
        shape[0] = batch
        model.reshape({model.input(0): shape})
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": PERFORMANCE_HINT}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        result = core().compile_model(model, "CPU", config)
    except Exception as e:
        raise ModelFileError(f"{path}: OpenVINO could not compile it for the CPU "
                             f"({str(e).strip().splitlines()[-1][:200] if str(e) else type(e).__name__})") from None
    cache_stats["compiles"] += 1
    _cache[key] = result
    return result


def math_precision(compiled: Any) -> str:
    """What the convolutions and matrix products of a compiled model actually run in (u8, bf16, f32):
    read from the executed graph, not from the hint, so a row's label is checked by the runtime."""
    found = []
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in _MATH_LAYERS:
            found.append(info["runtimePrecision"].astype(str))
    return "+".join(sorted(set(found))) or "none"


class _Arg:
    """An input or output as onnxruntime describes it: name, shape (None for a dynamic axis), type."""

    def __init__(self, port: Any) -> None:
        self.name = port.get_any_name()
        self.shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        element = port.get_element_type().to_string()
        self.type = "tensor(float)" if element == "f32" else f"tensor({element})"   # onnxruntime's spelling


class _Meta:
    def __init__(self, props: dict[str, str]) -> None:
        self.custom_metadata_map = props


class OpenVINOSession:
    """One ONNX file on OpenVINO's CPU plugin, with the subset of onnxruntime's session API that
    SessionRunner and Classifier use (get_inputs, get_outputs, get_modelmeta, run)."""

    runtime = "OpenVINO"

    def __init__(self, path: str | os.PathLike, *, precision: str = "fp32", threads: int | None = None) -> None:
        self.path, self.precision, self.threads = Path(path), precision, threads
        self.dynamic = compiled_model(self.path, batch=None, precision=precision, threads=threads)
        self._inputs = [_Arg(p) for p in self.dynamic.inputs]
        self._outputs = [_Arg(p) for p in self.dynamic.outputs]
        self.file_batch = self._inputs[0].shape[0] if self._inputs and self._inputs[0].shape else None
        self.static: dict[int, Any] = {}      # batch size -> the reshaped model chosen for it
        self.shapes: dict[int, str] = {}      # batch size -> "static" | "dynamic", once prepared
        # one infer request per compiled model, kept with the model it belongs to
        self._requests: dict[int, tuple[Any, Any]] = {}

    def get_inputs(self) -> list[_Arg]:
        return self._inputs

    def get_outputs(self) -> list[_Arg]:
        return self._outputs

    def get_modelmeta(self) -> _Meta:
        """The ONNX file's metadata_props, which OpenVINO's ONNX reader keeps as rt_info["framework"]."""
        model = _read(self.path)
        if not model.has_rt_info(["framework"]):
            return _Meta({})
        framework = model.get_rt_info()["framework"]
        return _Meta({k: v.astype(str) for k, v in framework.items()})

    def _model_for(self, n: int) -> Any:
        return self.static.get(n, self.dynamic)

    def _request(self, model: Any) -> Any:
        if id(model) not in self._requests:
            self._requests[id(model)] = (model, model.create_infer_request())
        return self._requests[id(model)][1]

    def run(self, output_names: Sequence[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = np.ascontiguousarray(next(iter(feed.values())), np.float32)
        req = self._request(self._model_for(len(x)))
        req.infer({0: x}, share_inputs=True)
        return [req.get_output_tensor(0).data.copy()]

    def prepare(self, batch_sizes: Sequence[int], *, seconds: float = CHOICE_SECONDS) -> dict[int, str]:
        """For each batch size, time the static reshape against the dynamic model on zeros and keep
        the faster; a file whose batch axis is already fixed has no choice to make."""
        if self.file_batch is not None:
            return self.shapes
        for b in batch_sizes:
            if b in self.shapes:
                continue
            static = compiled_model(self.path, batch=b, precision=self.precision, threads=self.threads)
            x = np.zeros([b, *self._inputs[0].shape[1:]], np.float32)
            t_static, t_dynamic = (_median_call(self._request(m), x, seconds) for m in (static, self.dynamic))
            if t_static <= t_dynamic:
                self.static[b] = static
            self.shapes[b] = "static" if t_static <= t_dynamic else "dynamic"
        return self.shapes

    def batch_shape(self, n: int) -> str:
        if self.file_batch is not None:
            return "fixed in file"
        return "static" if n in self.static else "dynamic"

    def details(self, n: int) -> dict[str, str]:
        """What a bench row records of this runtime at batch size n."""
        return {"batch_shape": self.batch_shape(n), "compute_precision": math_precision(self._model_for(n))}


def _median_call(req: Any, x: np.ndarray, seconds: float) -> float:
    """Median seconds of one inference, after two warm-up calls, over at least 3 calls or `seconds`."""
    for _ in range(2):
        req.infer({0: x}, share_inputs=True)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        req.infer({0: x}, share_inputs=True)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


class OpenVINORunner(SessionRunner):
    """SessionRunner's checks over an OpenVINO session, plus the shape choice and what ran."""

    session: OpenVINOSession

    def prepare(self, batch_sizes: Sequence[int]) -> dict[int, str]:
        return self.session.prepare(batch_sizes)

    def row_details(self, n: int) -> dict[str, str]:
        return self.session.details(n)


def openvino_runner(path: str | os.PathLike, *, precision: str = "fp32", threads: int | None = None,
                    num_classes: int | None = None) -> OpenVINORunner:
    return OpenVINORunner(OpenVINOSession(path, precision=precision, threads=threads), str(path), num_classes)
