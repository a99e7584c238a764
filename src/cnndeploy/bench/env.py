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
    smi = nvidia_smi()
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "l2_bytes": getattr(props, "L2_cache_size", None),
            "driver": smi["driver"] if smi else None, "clocks_start": smi and smi["clocks"], "clocks_end": None}


SMI_QUERY = ["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,driver_version", "--format=csv,noheader"]


def parse_nvidia_smi(text: str) -> dict[str, Any] | None:
    """GPU 0's line of SMI_QUERY's output ("1980 MHz, 3201 MHz, 570.86.15"): its clocks and driver."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    cells = [c.strip() for c in lines[0].split(",")] if lines else []
    if len(cells) != 3:
        return None

    def mhz(cell: str) -> int | None:
        number = cell.removesuffix("MHz").strip()
        return int(number) if number.isdigit() else None   # "[N/A]" on parts that do not report it

    return {"driver": cells[2] or None, "clocks": {"sm_mhz": mhz(cells[0]), "mem_mhz": mhz(cells[1])}}


def nvidia_smi() -> dict[str, Any] | None:
    """Clocks and driver as nvidia-smi reports them now; None where it is absent or fails."""
    try:
        res = subprocess.run(SMI_QUERY, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(res.stdout) if res.returncode == 0 else None


def record_end_clocks(env: dict[str, Any]) -> None:
    """The clocks at the end of a bench, beside those at its start: a drop says the GPU throttled."""
    if env.get("gpu"):
        smi = nvidia_smi()
        env["gpu"]["clocks_end"] = smi and smi["clocks"]


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
