"""The machine's nominal peak arithmetic rate, so a benchmark can say how close to the limit it runs.

nanoGPT's bench.py reports model FLOPs utilisation; we do the same per row: achieved
2 x MACs x images/s against the peak of the device and precision the row ran on. Peaks are
nominal (cores x clock x vector lanes x FMA pipes x 2, or the GPU's datasheet) and fixed per
machine, so shares compare across reports: a yardstick, not a hardware counter reading. Where
the OS reports a clock below what the cores boost to (VMs), a share can pass 100 %.
"""

from __future__ import annotations

import re
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


CPUFREQ_MAX = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")


def _cpu_clock_ghz(cpuinfo: dict[str, str], *, sysfs: bool = True) -> tuple[float, str] | None:
    """A clock that does not move between runs on one machine, and where it came from.

    Order: cpufreq's maximum (the boost clock, fixed per CPU), the rated clock in the model
    name ("... @ 2.60GHz", Intel's base), /proc/cpuinfo's "cpu MHz" (in a VM the fixed TSC
    clock the hypervisor reports). Rounded to 10 MHz so a last-digit wobble cannot move the peak.
    """
    if sysfs:
        try:
            return round(int(CPUFREQ_MAX.read_text()) / 1e6, 2), "cpufreq maximum"
        except (OSError, ValueError):
            pass
    rated = re.search(r"@\s*([0-9.]+)\s*GHz", cpuinfo.get("model name", ""))
    if rated:
        return round(float(rated.group(1)), 2), "rated clock in the model name"
    try:
        return round(float(cpuinfo["cpu MHz"]) / 1e3, 2), "/proc/cpuinfo 'cpu MHz'"
    except (KeyError, ValueError):
        return None


def _fp32_flops_per_cycle(flags: set[str], vendor: str, family: int) -> tuple[int, str]:
    """FP32 FLOPs per cycle per core: FP32 lanes per FMA pipe x 2 (multiply + add) x FMA pipes.

    Zen 4 (family 25) executes AVX-512 on its 256-bit datapaths: a 512-bit FMA occupies both
    256-bit halves of the FP unit, so its two FMA pipes give 2 x 8 lanes x 2 = 32, the same as
    AVX2 (AMD's software optimization guide for family 19h; A. J. Yee's Zen 4 and Zen 5 AVX-512
    teardowns). Zen 5 (family 26) widened the datapaths to 512 bits: 2 x 16 x 2 = 64. Intel
    parts with AVX-512 are taken to have two 512-bit FMA units (Xeon Gold/Platinum, Sapphire
    Rapids); SKUs with one would be over-estimated by 2x, which the basis makes checkable.
    """
    if "avx512f" in flags:
        if vendor == "AuthenticAMD" and family < 26:
            return 32, "AVX-512 on AMD Zen 4: 2 FMA pipes on 256-bit datapaths x 8 FP32 lanes x 2"
        return 64, "AVX-512: 2 FMA pipes x 16 FP32 lanes x 2"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2 + FMA: 2 FMA pipes x 8 FP32 lanes x 2"
    return 8, "SSE, no FMA: 4 FP32 lanes x (1 add + 1 multiply)"


def physical_cores(cpuinfo: dict[str, str], logical: int) -> int:
    """Cores behind `logical` CPUs: SMT siblings share one core's FMA pipes, so they add no peak."""
    try:
        smt = max(1, int(cpuinfo["siblings"]) // int(cpuinfo["cpu cores"]))
    except (KeyError, ValueError, ZeroDivisionError):
        smt = 1
    return max(1, -(-logical // smt))


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
    """The best FP32 rate two tuned kernels reach here now (torch SGEMM, onnxruntime 3x3 conv).

    Reported beside the nominal peak, never in its place: it moves with boost clocks and with
    whatever else runs on the machine, so shares against it would not compare across reports.
    Above the nominal peak it shows the cores boosting past the clock the OS reports.
    """
    rates = []
    for kernel in (_torch_sgemm, _ort_conv):
        try:
            rates.append(kernel(threads))
        except Exception:  # a missing backend leaves the other measurement
            continue
    return max(rates) if rates else None


def cpu_peak(threads: int, cpuinfo_text: str | None = None, measured_gflops: float | None = None, *,
             logical_cpus: int | None = None) -> dict[str, Any]:
    """Nominal FP32 GFLOP/s and INT8 GOP/s of the cores `threads` run on: cores x clock x FLOPs/cycle.

    Fixed per machine, so shares compare across reports. `measured_gflops` (measured_ceiling())
    is recorded beside it, labelled, and never changes it. With `cpuinfo_text` the machine's
    sysfs is not read (the text describes some other CPU).
    """
    fields = cpuinfo_fields(cpuinfo_text)
    ceiling = None if measured_gflops is None else round(measured_gflops, 1)
    if fields is None:
        return {"fp32_gflops": None, "int8_gops": None, "fp16_gflops": None, "measured_ceiling_gflops": ceiling,
                "basis": "no /proc/cpuinfo"}
    flags = set(fields.get("flags", "").split())
    clock = _cpu_clock_ghz(fields, sysfs=cpuinfo_text is None)
    if clock is None:
        return {"fp32_gflops": None, "int8_gops": None, "fp16_gflops": None, "measured_ceiling_gflops": ceiling,
                "basis": "CPU clock unknown"}
    ghz, source = clock
    per_cycle, unit = _fp32_flops_per_cycle(flags, fields.get("vendor_id", ""), int(fields.get("cpu family", 0)))
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    # VNNI's VPDPBUSD does 4 int8 multiply-adds per 32-bit lane where FMA does one: 4x the ops.
    int8_factor = 4 if vnni else 2
    cores = min(threads, physical_cores(fields, logical_cpus or threads))
    fp32 = round(cores * ghz * per_cycle, 1)
    smt = "" if cores == threads else f" ({threads} threads share their FMA pipes)"
    return {"fp32_gflops": fp32, "int8_gops": round(fp32 * int8_factor, 1), "fp16_gflops": None,
            "cores": cores, "clock_ghz": ghz, "flops_per_cycle": per_cycle, "measured_ceiling_gflops": ceiling,
            "basis": f"nominal: {cores} core{'s' * (cores != 1)}{smt} x {ghz:.2f} GHz ({source}) x {per_cycle} "
                     f"FP32 FLOP/cycle ({unit}); INT8 {int8_factor}x that ({'VNNI' if vnni else 'no VNNI'})"}


def gpu_peak(name: str) -> dict[str, Any]:
    for key, peaks in GPU_PEAKS:
        if key.lower() in name.lower():
            # dense BF16 equals dense FP16 on every part of the table (T4 has no bf16 tensor cores)
            bf16 = None if key == "T4" else peaks["fp16"] * 1e3
            return {"fp32_gflops": peaks["fp32"] * 1e3, "fp16_gflops": peaks["fp16"] * 1e3, "bf16_gflops": bf16,
                    "int8_gops": peaks["int8"] * 1e3, "basis": f"{key} datasheet, dense tensor-core peaks"}
    return {"fp32_gflops": None, "fp16_gflops": None, "bf16_gflops": None, "int8_gops": None,
            "basis": f"no datasheet entry for {name}: no utilisation column for its rows"}


def peak_for(peaks: dict[str, Any], precision: str) -> float | None:
    """The peak (G-ops/s) that applies to a row's precision: int8* -> int8, fp16 -> fp16, bf16 -> the
    GPU's bf16 tensor-core peak (on a CPU, whose record has none, the FP32 peak as before), else fp32."""
    if precision.startswith("int8"):
        return peaks.get("int8_gops")
    if precision == "bf16" and peaks.get("bf16_gflops"):
        return peaks["bf16_gflops"]
    return peaks.get("fp16_gflops") if precision == "fp16" else peaks.get("fp32_gflops")


def utilisation(macs: int | None, throughput_ips: float | None, peak: float | None) -> tuple[float | None, float | None]:
    """(achieved G-ops/s, share of peak) for a model of `macs` multiply-adds per image."""
    if not macs or not throughput_ips:
        return None, None
    achieved = 2 * macs * throughput_ips / 1e9
    return round(achieved, 3), (round(achieved / peak, 5) if peak else None)
