"""Learning-rate schedule as a pure function of the step, so resuming needs only the step."""

from __future__ import annotations


def lr_at(step: int, *, total_steps: int, peak: float, warmup: float) -> float:
    """Linear warm-up to `peak` over `warmup` of the steps, then linear decay to zero."""
    warm = max(1, int(total_steps * warmup))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * max(0.0, (total_steps - step) / max(1, total_steps - warm))
