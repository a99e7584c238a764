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


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (x86 AVX512-BF16 / AMX, Arm BF16)."""
    info = cpuinfo_fields() or {}
    flags = set((info.get("flags", "") + " " + info.get("Features", "")).split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
