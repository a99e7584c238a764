"""The machine's nominal peak arithmetic rate, so a benchmark can say how close to the limit it runs.

nanoGPT's bench.py reports model FLOPs utilisation; we do the same per row: achieved
2 x MACs x images/s against the peak of the device and precision the row ran on. Peaks are
nominal (vector width x FMA pipes x clock x threads, or the GPU's datasheet), so a share is an
upper-bound yardstick, not a hardware counter reading.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from cnndeploy.system import cpuinfo_fields

# Datasheet dense peaks in TFLOP/s (TOP/s for int8), SXM parts unless named; the first match wins.
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"fp32": 67.0, "fp16": 989.4, "int8": 1978.9}),
    ("H100 PCIe", {"fp32": 51.2, "fp16": 756.0, "int8": 1513.0}),
    ("H100", {"fp32": 67.0, "fp16": 989.4, "int8": 1978.9}),
    ("A100", {"fp32": 19.5, "fp16": 312.0, "int8": 624.0}),
    ("L40S", {"fp32": 91.6, "fp16": 362.1, "int8": 733.0}),
    ("L4", {"fp32": 30.3, "fp16": 121.0, "int8": 242.5}),
    ("A10", {"fp32": 31.2, "fp16": 125.0, "int8": 250.0}),
    ("T4", {"fp32": 8.1, "fp16": 65.0, "int8": 130.0}),
]


def _cpu_clock_ghz(cpuinfo: dict[str, str]) -> float | None:
    """The highest nominal clock the OS exposes (cpufreq max, else /proc/cpuinfo's current MHz)."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        pass
    try:
        return float(cpuinfo["cpu MHz"]) / 1e3
    except (KeyError, ValueError):
        return None


def _fp32_flops_per_cycle(flags: set[str], vendor: str, family: int) -> tuple[int, str]:
    """FP32 FLOPs per cycle per core: lanes x 2 (FMA) x FMA pipes."""
    if "avx512f" in flags:
        if vendor == "AuthenticAMD" and family < 26:  # Zen 4 runs AVX-512 on two 256-bit pipes
            return 32, "AVX-512 on AMD Zen 4 (two 256-bit FMA pipes)"
        return 64, "AVX-512 (two 512-bit FMA pipes)"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2 + FMA (two 256-bit FMA pipes)"
    return 8, "SSE (no FMA)"


def _best_rate(run: Callable[[], Any], flops: float, reps: int = 10) -> float:
    run()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def _torch_sgemm(threads: int, n: int = 1024) -> float:
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        return _best_rate(lambda: torch.mm(a, b), 2 * n**3)
    finally:
        torch.set_num_threads(saved)


def _ort_conv(threads: int, n: int = 32, c: int = 256, hw: int = 14) -> float:
    """A ResNet-like 3x3 convolution through onnxruntime's NCHWc kernels, its best FP32 path on x86."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from cnndeploy.runtime.onnxruntime_import import onnxruntime

    ort = onnxruntime()

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((c, c, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, c, hw, hw])], [weight])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                .SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.zeros((n, c, hw, hw), np.float32)
    return _best_rate(lambda: sess.run(None, {"x": x}), 2 * n * c * c * 9 * hw * hw)


def measured_ceiling(threads: int) -> float | None:
    """The best FP32 rate two tuned kernels reach here (torch SGEMM, onnxruntime 3x3 conv).

    Virtual machines report the base clock in /proc/cpuinfo while the cores boost above it, so a
    nominal peak alone can sit below what a real kernel achieves; this empirical ceiling (as in
    the Empirical Roofline Toolkit) keeps every share at or under 100 %.
    """
    rates = []
    for kernel in (_torch_sgemm, _ort_conv):
        try:
            rates.append(kernel(threads))
        except Exception:  # a missing backend leaves the other measurement
            continue
    return max(rates) if rates else None


def cpu_peak(threads: int, cpuinfo_text: str | None = None, measured_gflops: float | None = None) -> dict[str, Any]:
    """FP32 GFLOP/s and INT8 GOP/s of `threads` cores: vector units x clock, the clock raised to
    what `measured_gflops` (measured_ceiling() on the same threads) implies when that is higher."""
    fields = cpuinfo_fields(cpuinfo_text)
    if fields is None:
        return {"fp32_gflops": None, "int8_gops": None, "basis": "no /proc/cpuinfo"}
    flags = set(fields.get("flags", "").split())
    ghz = _cpu_clock_ghz(fields)
    if ghz is None:
        return {"fp32_gflops": None, "int8_gops": None, "basis": "CPU clock unknown"}
    per_cycle, unit = _fp32_flops_per_cycle(flags, fields.get("vendor_id", ""), int(fields.get("cpu family", 0)))
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    # VNNI's VPDPBUSD does 4 int8 multiply-adds per 32-bit lane where FMA does one: 4x the ops.
    int8_factor = 4 if vnni else 2
    clock = f"{ghz:.2f} GHz"
    implied = measured_gflops / (threads * per_cycle) if measured_gflops else 0.0
    if implied > ghz:
        clock = (f"{implied:.2f} GHz (measured kernels reached {measured_gflops:.0f} GFLOP/s; /proc/cpuinfo "
                 f"says {ghz:.2f})")
        ghz = implied
    fp32 = threads * ghz * per_cycle
    return {"fp32_gflops": round(fp32, 1), "int8_gops": round(fp32 * int8_factor, 1), "fp16_gflops": None,
            "measured_ceiling_gflops": None if measured_gflops is None else round(measured_gflops, 1),
            "basis": f"{threads} threads x {clock} x {per_cycle} FP32 FLOP/cycle ({unit}); INT8 "
                     f"{int8_factor}x that ({'VNNI' if vnni else 'no VNNI'})"}


def gpu_peak(name: str) -> dict[str, Any]:
    for key, peaks in GPU_PEAKS:
        if key.lower() in name.lower():
            return {"fp32_gflops": peaks["fp32"] * 1e3, "fp16_gflops": peaks["fp16"] * 1e3,
                    "int8_gops": peaks["int8"] * 1e3, "basis": f"{key} datasheet, dense tensor-core peaks"}
    return {"fp32_gflops": None, "fp16_gflops": None, "int8_gops": None, "basis": f"no datasheet entry for {name}"}


def peak_for(peaks: dict[str, Any], precision: str) -> float | None:
    """The peak (G-ops/s) that applies to a row's precision: int8* -> int8, fp16 -> fp16, else fp32."""
    if precision.startswith("int8"):
        return peaks.get("int8_gops")
    return peaks.get("fp16_gflops") if precision == "fp16" else peaks.get("fp32_gflops")


def utilisation(macs: int | None, throughput_ips: float | None, peak: float | None) -> tuple[float | None, float | None]:
    """(achieved G-ops/s, share of peak) for a model of `macs` multiply-adds per image."""
    if not macs or not throughput_ips:
        return None, None
    achieved = 2 * macs * throughput_ips / 1e9
    return round(achieved, 3), (round(achieved / peak, 5) if peak else None)
