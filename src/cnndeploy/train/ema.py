"""Exponential moving average of the weights, as timm's ModelEmaV3 with its decay warm-up.

Every floating-point entry of the state dict is averaged (parameters and BatchNorm running
statistics alike, timm's default); integer buffers (num_batches_tracked) are copied. The decay
depends only on the optimizer step, so a resumed run needs nothing but the step and the averaged
tensors in its checkpoint.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# timm's warm-up (after @crowsonkb): decay_t = 1 - (1 + t)^-power, capped at the decay asked for.
# power 3/4 is timm's advice for runs of under ~100k steps (0.999 is reached after 10k steps);
# without a warm-up a short run's average would remember the random initial weights.
WARMUP_POWER = 0.75


def ema_decay(step: int, decay: float) -> float:
    """The decay of the update made after optimizer step `step` (1-based): the first one copies."""
    t = step - 1
    if t <= 0:
        return 0.0
    return min(decay, 1.0 - (1.0 + t) ** -WARMUP_POWER)


class ModelEma:
    """A copy of `model` (in eval mode) that follows its weights with decay `decay`."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay}: expected a number in (0, 1)")
        self.decay = decay
        self.source = model
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        self._lerp = [(e, m) for e, m in pairs if e.is_floating_point()]
        self._copy = [(e, m) for e, m in pairs if not e.is_floating_point()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the source's weights after optimizer step `step` (1-based)."""
        weight = 1.0 - ema_decay(step, self.decay)
        torch._foreach_lerp_([e for e, _ in self._lerp], [m.detach() for _, m in self._lerp], weight)
        for e, m in self._copy:
            e.copy_(m)
