"""Learning-rate schedules as pure functions of the step, so resuming needs only the step."""

from __future__ import annotations

import math

SCHEDULES = ("linear", "cosine", "onecycle")

# torch.optim.lr_scheduler.OneCycleLR's defaults: start at peak/25, end at peak/(25 * 1e4).
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4


def lr_at(step: int, *, total_steps: int, peak: float, warmup: float, schedule: str = "linear") -> float:
    """The learning rate of optimizer step `step` (0-based) out of `total_steps`.

    linear: linear warm-up to `peak` over `warmup` of the steps, then linear decay to zero.
    cosine: the same warm-up, then half a cosine down to zero.
    onecycle: half a cosine up from peak/25 to `peak` over `warmup` of the steps, then half a
    cosine down to peak/250000 (OneCycleLR with its `pct_start` set to `warmup`).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    warm = max(1, int(total_steps * warmup))
    if schedule == "onecycle":
        start, end = peak / ONECYCLE_DIV, peak / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
        if step < warm:
            return _cosine(start, peak, step / warm)
        return _cosine(peak, end, (step - warm) / max(1, total_steps - 1 - warm))
    if step < warm:
        return peak * (step + 1) / warm
    if schedule == "cosine":
        return _cosine(peak, 0.0, (step - warm) / max(1, total_steps - warm))
    return peak * max(0.0, (total_steps - step) / max(1, total_steps - warm))


def _cosine(start: float, end: float, progress: float) -> float:
    """From `start` (progress 0) to `end` (progress 1) along half a cosine."""
    p = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))
