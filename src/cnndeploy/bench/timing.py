"""Latency statistics with warm-up, a call/time budget and an optional device sync per call.

Kept minimal per call (one perf_counter_ns pair and a list append) so that the harness's own
overhead stays in the microseconds: `benchmarks/harness_overhead.py` measures it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class LatencyStats:
    calls: int
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    def throughput(self, batch_size: int) -> float:
        """Images per second at the median latency."""
        return batch_size / (self.p50_ms / 1000.0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted samples."""
    rank = max(1, math.ceil(q / 100.0 * len(sorted_ns)))
    return float(sorted_ns[rank - 1])


def stats_from_ns(samples_ns: list[int]) -> LatencyStats:
    if not samples_ns:
        raise ValueError("no timing samples")
    s = sorted(samples_ns)
    mean = sum(s) / len(s)
    std = math.sqrt(sum((x - mean) ** 2 for x in s) / len(s))
    ms = 1e-6
    return LatencyStats(calls=len(s), mean_ms=mean * ms, std_ms=std * ms, p50_ms=_percentile(s, 50) * ms,
                        p90_ms=_percentile(s, 90) * ms, p99_ms=_percentile(s, 99) * ms)


def sample_ns(fn: Callable[[], Any], *, warmup: int = 10, min_calls: int = 20, min_seconds: float = 1.0,
              max_calls: int = 100_000, sync: Callable[[], None] | None = None) -> list[int]:
    """Nanoseconds per call of `fn()` after `warmup` calls, until both `min_calls` and `min_seconds`.

    `sync` (e.g. torch.cuda.synchronize) runs inside each timed call, so asynchronous
    devices are timed to completion.
    """
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples: list[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(min_seconds * 1e9)
    while len(samples) < max_calls and (len(samples) < min_calls or clock() < deadline):
        t0 = clock()
        fn()
        if sync:
            sync()
        samples.append(clock() - t0)
    return samples


def measure(fn: Callable[[], Any], *, warmup: int = 10, min_calls: int = 20, min_seconds: float = 1.0,
            max_calls: int = 100_000, sync: Callable[[], None] | None = None) -> LatencyStats:
    """Latency statistics of `fn()`: `sample_ns` with the same budgets, summarised."""
    return stats_from_ns(sample_ns(fn, warmup=warmup, min_calls=min_calls, min_seconds=min_seconds,
                                   max_calls=max_calls, sync=sync))


def rotation_count(batch_bytes: int, l2_bytes: int | None, *, most: int = 8) -> int:
    """How many input buffers to rotate among so that a call never finds its input still in the
    GPU's L2 from the call before: enough that together they exceed twice L2, at least 2 (capped at
    `most`: small batches are launch-bound and their inputs fit L2 whatever one does). Unknown L2: 1."""
    if not l2_bytes or batch_bytes <= 0:
        return 1
    return max(2, min(most, math.ceil(2 * l2_bytes / batch_bytes)))


def spread(values: list[float]) -> float | None:
    """How far the lowest of repeated rates fell below the highest, (max - min) / max; None under two.

    Relative to the highest so it stays below 1 even when one round stalled, and reads like the
    gap it is compared with: "x% slower".
    """
    if len(values) < 2 or max(values) <= 0:
        return None
    return (max(values) - min(values)) / max(values)
