"""One runner per backend: given a variant, a callable on a float32 NCHW batch, or a skip reason.

A backend that is not installed or needs an absent GPU is never an exception: `make_runner`
returns the reason, and the harness records a row with `status: "skipped: <reason>"`.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import numpy as np

from cnndeploy.bench.variants import Variant

BACKENDS = ("torch", "torch-compile", "ort", "ort-cuda", "ort-trt", "tensorrt")
Runner = Callable[[np.ndarray], np.ndarray]
# Which kind of file each backend executes.
KIND = {"torch": "weights", "torch-compile": "weights", "ort": "onnx", "ort-cuda": "onnx",
        "ort-trt": "onnx", "tensorrt": "engine"}


def check_backends(backends: list[str]) -> list[str]:
    """The backends as given, or one error naming the unknown ones (raised before any work)."""
    from cnndeploy.errors import CnnDeployError

    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown or not backends:
        raise CnnDeployError(f"--backends: unknown {unknown}; expected some of {', '.join(BACKENDS)}")
    return backends


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _ort_provider(name: str) -> str | None:
    import onnxruntime as ort

    return None if name in ort.get_available_providers() else f"onnxruntime has no {name}"


def _torch_runner(variant: Variant, *, compile_: bool, threads: int | None) -> Runner:
    import torch

    from cnndeploy.models.weights import load_run

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if _cuda() else "cpu"
    model, _ = load_run(variant.run, device)
    fn = torch.compile(model) if compile_ else model

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = fn(torch.from_numpy(x).to(device))
        return out.float().cpu().numpy()
    return run


def _ort_runner(variant: Variant, provider: str, threads: int | None) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    providers = list(dict.fromkeys([provider, "CPUExecutionProvider"]))  # CPU as the fallback
    sess = ort.InferenceSession(str(variant.path), opts, providers=providers)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def _trt_runner(variant: Variant) -> Runner:
    import torch

    from cnndeploy.export.tensorrt import TensorRTRunner

    engine = TensorRTRunner(variant.path)
    return lambda x: engine(torch.from_numpy(x)).cpu().numpy()


def on_gpu(backend: str) -> bool:
    """Whether `backend` computes on the GPU here (torch follows CUDA availability)."""
    return backend in ("ort-cuda", "ort-trt", "tensorrt") or (backend.startswith("torch") and _cuda())


def skip_reason(backend: str, variant: Variant) -> str | None:
    """Why `backend` cannot run `variant` here, or None if it can."""
    if KIND[backend] != variant.kind:
        return f"{backend} runs {KIND[backend]} files, not {variant.kind}"
    if backend == "torch-compile" and not _cuda():
        return None
    if backend == "ort-cuda":
        return _ort_provider("CUDAExecutionProvider")
    if backend == "ort-trt":
        return _ort_provider("TensorrtExecutionProvider")
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
        return _trt_runner(variant)
    provider = {"ort": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
                "ort-trt": "TensorrtExecutionProvider"}[backend]
    return _ort_runner(variant, provider, threads)
