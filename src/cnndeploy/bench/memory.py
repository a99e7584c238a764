"""Peak memory of one benchmark row: what loading and running a variant added to the process.

CPU: Linux resets the resident-set high-water mark (VmHWM) when "5" is written to
/proc/self/clear_refs, so the peak can be read per variant without a child process.
CUDA: torch's allocator keeps its own peak (TensorRT runs on torch-allocated buffers too);
onnxruntime's CUDA arena is invisible to it, so those rows report None rather than a guess.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

STATUS = Path("/proc/self/status")


def _status_kib(key: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Filled in by `track()`: `mb` is the peak increase in MB, or None if unmeasurable."""

    mb: float | None = None
    kind: str | None = None


@contextmanager
def track(cuda: bool) -> Iterator[PeakMemory]:
    result = PeakMemory()
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        yield result
        torch.cuda.synchronize()
        result.mb, result.kind = (torch.cuda.max_memory_allocated() - base) / 1e6, "cuda"
        return
    base = _status_kib("VmRSS")
    ok = base is not None and _reset_rss_peak()
    yield result
    peak = _status_kib("VmHWM")
    if ok and peak is not None:
        result.mb, result.kind = max(0, peak - base) * 1024 / 1e6, "rss"
