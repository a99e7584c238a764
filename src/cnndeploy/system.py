"""What this machine is: /proc/cpuinfo's fields and the CPU's native low-precision instructions."""

from __future__ import annotations

import os
from pathlib import Path


def cpuinfo_fields(text: str | None = None) -> dict[str, str] | None:
    """/proc/cpuinfo's first processor block as a dict (None where there is no such file)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key.strip(), value.strip())
    return fields


BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")   # best first: AMX tiles, AVX-512 dot products, Arm BF16


def cpu_bf16_isa() -> str | None:
    """Which native bf16 instructions this CPU has (amx_bf16, avx512_bf16, or Arm's bf16), None without."""
    info = cpuinfo_fields() or {}
    flags = set((info.get("flags", "") + " " + info.get("Features", "")).split())
    return next((f for f in BF16_FLAGS if f in flags), None)


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (x86 AVX512-BF16 / AMX, Arm BF16)."""
    return cpu_bf16_isa() is not None


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")   # 8-bit dot products summed straight into int32
SATURATES_ENV = "CNNDEPLOY_INT8_SATURATES"   # "1"/"0": override the detection (tests, cross-machine builds)


def cpu_int8_saturates() -> bool:
    """Whether this CPU's 8-bit kernels saturate on full-range int8 weights.

    x86 without VNNI/AMX multiplies u8 x s8 pairs into int16 (vpmaddubsw), which overflows when two
    products near 255 x 127 add up; onnxruntime and OpenVINO then compute wrong convolutions (measured
    here: 29% of the largest logit on LeNet-5, a point of accuracy). 7-bit weights ([-64, 64], onnxruntime's
    reduce_range) cannot overflow. Arm's sdot/udot and x86 VNNI sum in int32: no saturation."""
    forced = os.environ.get(SATURATES_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    info = cpuinfo_fields() or {}
    flags = set(info.get("flags", "").split())
    return bool(flags & {"sse4_1", "avx2"}) and not flags & set(VNNI_FLAGS)
