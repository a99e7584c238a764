"""The environment record of a benchmark: machine, vector units, GPU, library versions, commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from cnndeploy import __version__
from cnndeploy.bench.peak import cpu_peak, gpu_peak, measured_ceiling
from cnndeploy import system
from cnndeploy.system import cpuinfo_fields

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")
PACKAGES = ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "openvino", "tensorrt", "numpy")


def _cpuinfo() -> dict[str, Any]:
    fields = cpuinfo_fields()
    if fields is None:
        return {"cpu": platform.processor() or platform.machine(), "cpu_flags": []}
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name", platform.machine()),
            "cpu_flags": [f for f in CPU_FLAGS if f in flags]}


def _versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["cnndeploy"] = __version__
    return out


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None


def _gpu() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
            "driver": _nvidia_driver()}


def _nvidia_driver() -> str | None:
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else None


def environment(threads: int | None = None) -> dict[str, Any]:
    """What a benchmark ran on, so numbers from different machines are never mixed up."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = _gpu()
    used = threads or affinity or 1
    from cnndeploy.runtime.openvino import version as openvino_version

    return {**_cpuinfo(), "bf16_isa": system.cpu_bf16_isa(), "openvino_build": openvino_version(),
            "cores": os.cpu_count(), "cores_usable": affinity, "threads": threads,
            "gpu": gpu, "python": platform.python_version(), "platform": platform.platform(),
            "versions": _versions(), "git_commit": _git_commit(),
            "peak": {"cpu": cpu_peak(used, measured_gflops=measured_ceiling(used), logical_cpus=affinity),
                     "gpu": gpu_peak(gpu["name"]) if gpu else None}}
