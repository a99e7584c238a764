"""Peak memory of one benchmark row: what loading and running a variant added on the GPU.

CUDA: torch's allocator keeps its own peak (TensorRT runs on torch-allocated buffers too), and
it counts exactly the bytes this variant allocated on top of what was resident before;
onnxruntime's CUDA arena is invisible to it, so those rows report None rather than a guess.
CPU: not measured. The process's resident-set high-water mark (reset through
/proc/self/clear_refs) was tried: in one process that has already run other variants, freed
heap pages are reused without raising RSS, so the same file read 0 MB after others and 11 MB
alone. Only a fresh process per variant could measure it, at seconds of start-up per row.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class PeakMemory:
    """Filled in by `track()`: `mb` is the peak increase in MB, or None if unmeasurable."""

    mb: float | None = None
    kind: str | None = None


@contextmanager
def track(cuda: bool) -> Iterator[PeakMemory]:
    result = PeakMemory()
    if not cuda:
        yield result
        return
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    yield result
    torch.cuda.synchronize()
    result.mb, result.kind = (torch.cuda.max_memory_allocated() - base) / 1e6, "cuda"
