"""One runner per backend: given a variant, a callable on a float32 NCHW batch, or a skip reason.

A backend that is not installed or needs an absent GPU is never an exception: `skip_reason`
says why, and bench records a row with `status: "skipped: <reason>"`. torch, TensorRT and
OpenVINO are imported only by the runners that use them.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

import numpy as np

from cnndeploy import system
from cnndeploy.artifacts.files import BACKENDS_BY_KIND, COMPUTE_PRECISIONS, compute_spec
from cnndeploy.artifacts.variants import Variant
from cnndeploy.errors import CnnDeployError
from cnndeploy.runtime import int8_cpu
from cnndeploy.runtime.classifier import SessionRunner

Runner = Callable[[np.ndarray], np.ndarray]
BACKENDS = tuple(b for backends in BACKENDS_BY_KIND.values() for b in backends)
KIND = {b: kind for kind, backends in BACKENDS_BY_KIND.items() for b in backends}  # the file kind each runs
PROVIDERS = {"ort": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
             "ort-trt": "TensorrtExecutionProvider"}


def check_backends(backends: list[str]) -> list[str]:
    """The backends as given, or one error naming the unknown ones (raised before any work)."""
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown or not backends:
        raise CnnDeployError(f"--backends: unknown {unknown}; expected some of {', '.join(BACKENDS)}")
    return backends


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _ort_provider(name: str) -> str | None:
    from cnndeploy.runtime.onnxruntime_import import onnxruntime

    return None if name in onnxruntime().get_available_providers() else f"onnxruntime has no {name}"


TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # torch's compute precisions


def torch_model_runner(model: Any, device: Any = "cpu", *, compile_: bool = False,
                       precision: str = "fp32") -> Runner:
    """A torch module as a runner: numpy in, float32 numpy logits out, no autograd.

    fp16/bf16 cast the weights and every input batch (channels_last, the layout tensor-core
    convolutions want); the logits come back as float32 like every other runner's.
    """
    import torch

    dtype = getattr(torch, TORCH_DTYPES[precision])
    if precision != "fp32":
        model = model.to(dtype=dtype, memory_format=torch.channels_last)
    fn = torch.compile(model) if compile_ else model
    layout = torch.channels_last if precision != "fp32" else torch.contiguous_format

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
            out = fn(t.to(dtype=dtype, memory_format=layout) if precision != "fp32" else t)
        return out.float().cpu().numpy()
    return run


COMPILE_MODE_CUDA = "reduce-overhead"   # torch.compile with CUDA graphs: batch 1 is launch-bound


class TorchCudaRunner:
    """A torch module on the GPU, with the device-resident path the bench times.

    `__call__` takes and returns host arrays (accuracy, serving); `to_device` puts one batch on the
    GPU once and `run_on_device` runs the model on it, leaving the logits there, so a timed call
    is the model, not PCIe. With `compile_mode`, `prepare` compiles one static-shape module per
    batch size (CUDA graphs with reduce-overhead) and times it; other batch sizes run eagerly.
    """

    def __init__(self, model: Any, precision: str = "fp32", compile_mode: str | None = None) -> None:
        import torch

        self.torch, self.dtype = torch, getattr(torch, TORCH_DTYPES[precision])
        self.layout = torch.contiguous_format if precision == "fp32" else torch.channels_last
        self.model = model if precision == "fp32" else model.to(dtype=self.dtype, memory_format=self.layout)
        self.compile_mode, self.compiled, self.compile_seconds = compile_mode, {}, {}
        self._shape: tuple[int, ...] | None = None   # one image's shape, learnt from the first batch

    def prepare(self, batch_sizes: list[int]) -> None:
        """One compiled module per batch size, compile and graph capture timed (three calls: the
        first compiles, the next two warm up and record the CUDA graph)."""
        import time

        torch = self.torch
        if not self.compile_mode:
            return
        if self._shape is None:
            raise CnnDeployError("TorchCudaRunner.prepare: run one batch first (the image shape is taken from it)")
        limits = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):   # shapes x variants share one code cache
            if hasattr(limits, name):
                setattr(limits, name, max(getattr(limits, name), 64))
        for b in batch_sizes:
            fn = torch.compile(self.model, mode=self.compile_mode, dynamic=False)
            x = torch.zeros((b, *self._shape), device="cuda").to(dtype=self.dtype, memory_format=self.layout)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad():   # not inference_mode: CUDA-graph capture is documented under no_grad
                for _ in range(3):
                    torch.compiler.cudagraph_mark_step_begin()
                    fn(x)
            torch.cuda.synchronize()
            self.compiled[b], self.compile_seconds[b] = fn, round(time.perf_counter() - t0, 3)

    def to_device(self, x: np.ndarray) -> Any:
        t = self.torch.from_numpy(np.ascontiguousarray(x)).to("cuda")
        self._shape = tuple(x.shape[1:])
        return t.to(dtype=self.dtype, memory_format=self.layout)

    def run_on_device(self, t: Any) -> Any:
        fn = self.compiled.get(t.shape[0])
        if fn is None:
            with self.torch.inference_mode():
                return self.model(t)
        with self.torch.no_grad():
            self.torch.compiler.cudagraph_mark_step_begin()
            return fn(t)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # clone-free: .float().cpu() copies the logits out before a graph replay can overwrite them
        return self.run_on_device(self.to_device(x)).float().cpu().numpy()

    def row_details(self, b: int) -> dict[str, Any]:
        return {"compile_mode": self.compile_mode, "compile_seconds": self.compile_seconds.get(b)}


def _torch_runner(variant: Variant, *, compile_: bool, threads: int | None) -> Runner:
    import torch

    from cnndeploy.models.weights import load_run

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if _cuda() else "cpu"
    model, _ = load_run(variant.run, device)
    if device == "cuda":
        return TorchCudaRunner(model, variant.precision, COMPILE_MODE_CUDA if compile_ else None)
    return torch_model_runner(model, device, compile_=compile_, precision=variant.precision)


def ort_session(path: Any, provider: str = "CPUExecutionProvider", threads: int | None = None) -> Any:
    """An onnxruntime session on `provider`, with the CPU provider as its fallback.

    A QDQ file that would overflow this CPU's 8-bit kernels runs unfused (runtime.int8_cpu)."""
    from cnndeploy.runtime.onnxruntime_import import onnxruntime

    ort = onnxruntime()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    int8_cpu.faithful(opts, path, [provider])
    providers = list(dict.fromkeys([provider, "CPUExecutionProvider"]))
    return ort.InferenceSession(str(path), opts, providers=providers)


def _ort_runner(variant: Variant, provider: str, threads: int | None) -> Runner:
    from cnndeploy.artifacts.card import ModelCard

    # the same checks as eval's Classifier: fixed batch sizes, [N, classes] outputs
    cls = OrtCudaRunner if provider == PROVIDERS["ort-cuda"] else SessionRunner
    return cls(ort_session(variant.path, provider, threads), str(variant.path), ModelCard.read(variant.run).num_classes)


class OrtCudaRunner(SessionRunner):
    """SessionRunner on the CUDA provider, plus I/O binding: the input copied to the GPU once, the
    output left there (onnxruntime's IOBinding), so a timed `run_on_device` call is the model."""

    def to_device(self, x: np.ndarray) -> Any:
        from cnndeploy.runtime.onnxruntime_import import onnxruntime

        if self.fixed_batch and self.fixed_batch != len(x):
            return None   # a file of fixed batch size runs in slices: only the host path does that
        value = onnxruntime().OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x, np.float32), "cuda", 0)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, value)
        binding.bind_output(self.output_name, "cuda", 0)
        return binding, value   # the value kept alive beside its binding

    def run_on_device(self, bound: Any) -> None:
        self.session.run_with_iobinding(bound[0])


def _openvino_runner(variant: Variant, threads: int | None) -> Runner:
    from cnndeploy.artifacts.card import ModelCard
    from cnndeploy.runtime.openvino import openvino_runner

    # an FP32 file computes in f32 unless this is the bf16 row; INT8 files keep their int8 kernels
    precision = "bf16" if variant.precision == "bf16" else "fp32"
    return openvino_runner(variant.path, precision=precision, threads=threads,
                           num_classes=ModelCard.read(variant.run).num_classes)


def engine_runner(path: Any) -> Runner:
    """A TensorRT engine as a numpy runner (the engine itself takes torch CUDA tensors)."""
    import torch

    from cnndeploy.runtime.tensorrt import TensorRTRunner

    engine = TensorRTRunner(path)

    def run(x: np.ndarray) -> np.ndarray:
        outs = [engine(torch.from_numpy(np.ascontiguousarray(x[i:i + engine.max_batch]))).cpu().numpy()
                for i in range(0, len(x), engine.max_batch)]
        return np.concatenate(outs)
    return run


def _computes(backend: str, precision: str) -> bool:
    """Whether this machine computes `precision` on `backend`: torch's fp16/bf16 rows need a CUDA
    GPU (on a CPU they would time emulation, not a deployment); OpenVINO's bf16 needs AVX512-BF16 or AMX."""
    if backend == "torch":
        return _cuda()
    return precision != "bf16" or system.cpu_bf16_isa() is not None


def backend_variants(backend: str, variant: Variant) -> list[Variant]:
    """The rows `backend` makes of `variant`: the file itself, then each extra compute precision it
    offers for that file (OpenVINO's bf16 of model.onnx, torch's fp16/bf16 of the weights) where
    this machine computes it. Elsewhere there is no such row at all, not a skipped one: it is not a file to make."""
    extra = COMPUTE_PRECISIONS.get((backend, variant.spec.name), ())
    return [variant] + [Variant(variant.run, compute_spec(variant.spec, p)) for p in extra if _computes(backend, p)]


def on_gpu(backend: str) -> bool:
    """Whether `backend` computes on the GPU here (torch follows CUDA availability)."""
    return backend in ("ort-cuda", "ort-trt", "tensorrt") or (backend.startswith("torch") and _cuda())


def skip_reason(backend: str, variant: Variant) -> str | None:
    """Why `backend` cannot run `variant` here, or None if it can."""
    if KIND[backend] != variant.kind:
        return f"{backend} runs {KIND[backend]} files, not {variant.kind}"
    if backend in ("ort-cuda", "ort-trt"):
        return _ort_provider(PROVIDERS[backend])
    if backend == "openvino" and importlib.util.find_spec("openvino") is None:
        from cnndeploy.runtime.openvino import INSTALL_HINT

        return f"openvino is not installed ({INSTALL_HINT})"
    if backend == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            return "tensorrt is not installed"
        if not _cuda():
            return "no CUDA GPU"
    return None


def make_runner(backend: str, variant: Variant, *, threads: int | None = None) -> Runner:
    if backend in ("torch", "torch-compile"):
        return _torch_runner(variant, compile_=backend == "torch-compile", threads=threads)
    if backend == "tensorrt":
        return engine_runner(variant.path)
    if backend == "openvino":
        return _openvino_runner(variant, threads)
    return _ort_runner(variant, PROVIDERS[backend], threads)
