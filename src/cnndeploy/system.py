"""What this machine is: /proc/cpuinfo's fields and the CPU's native low-precision instructions."""

from __future__ import annotations

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
