"""What `cnndeploy optimize` searches over, and the clock it must finish inside."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from cnndeploy.errors import CnnDeployError

TARGETS = ("cpu", "cuda")
# The backends a target's candidates run on (those not installed here are recorded as skipped).
TARGET_BACKENDS = {"cpu": ("ort", "openvino"), "cuda": ("ort-cuda", "tensorrt", "torch")}
# The INT8 flavour of each target: uint8 activations for x86 VNNI, symmetric int8 for TensorRT.
QUANT_TARGET = {"cpu": "cpu", "cuda": "tensorrt"}
DISTILL = ("auto", "on", "off")


@dataclass(frozen=True)
class OptimizeConfig:
    max_drop: float                        # accuracy points the shipped file may lose (validation split)
    target: str = "cpu"
    backends: tuple[str, ...] | None = None   # None: TARGET_BACKENDS[target]
    batch_size: int = 64
    time_budget: float | None = None       # seconds for the whole search; None: no limit
    amounts: tuple[float, ...] = (0.3, 0.5, 0.7)   # pruning amounts tried beside the unpruned model
    finetune_epochs: int | None = None     # None: prune's default (20% of the training run)
    distill: str = "auto"                  # auto: try both at the first amount, keep the better
    val_size: int | None = None            # None: the run's held-out split, else 10% of train (<= 5000)
    val_seed: int = 0
    calib_size: int = 512                  # training images (never validation ones) for INT8 ranges
    max_fallback: int = 6                  # layers kept in float, one more per try
    qat_epochs: int = 1                    # 0: no QAT
    min_seconds: float = 2.0               # timing budget per measured row
    threads: int | None = None
    seed: int = 0
    reuse: str | None = None               # an earlier optimize --out of the same RUN_DIR: its fine-tunes are reused

    def resolved_backends(self) -> tuple[str, ...]:
        return tuple(self.backends) if self.backends else TARGET_BACKENDS[self.target]

    def check(self) -> "OptimizeConfig":
        from cnndeploy.runtime.runners import check_backends

        if not (isinstance(self.max_drop, (int, float)) and not isinstance(self.max_drop, bool)
                and 0 <= self.max_drop < 100):
            raise CnnDeployError(f"--max-drop {self.max_drop!r}: expected accuracy points in [0, 100), e.g. 0.5")
        if self.target not in TARGETS:
            raise CnnDeployError(f"--target {self.target!r}: expected one of {', '.join(TARGETS)}")
        if self.backends is not None:
            check_backends(list(self.backends))
        for name in ("batch_size", "calib_size", "min_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise CnnDeployError(f"--{name.replace('_', '-')} {value!r}: expected a positive number")
        if self.time_budget is not None and not self.time_budget > 0:
            raise CnnDeployError(f"--time-budget {self.time_budget!r}: expected a positive duration")
        if any(not 0 < a < 1 for a in self.amounts):
            raise CnnDeployError(f"--amounts {list(self.amounts)}: expected fractions of channels in (0, 1)")
        if self.distill not in DISTILL:
            raise CnnDeployError(f"--distill {self.distill!r}: expected one of {', '.join(DISTILL)}")
        if self.val_size is not None and self.val_size < 1:
            raise CnnDeployError(f"--val-size {self.val_size}: expected a positive number of training images")
        if self.qat_epochs < 0 or self.max_fallback < 0:
            raise CnnDeployError("--qat-epochs and --max-fallback: expected 0 (off) or a positive integer")
        return self


_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'90s', '30m', '1.5h' or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text or "")
    if not m or float(m[1]) <= 0:
        raise CnnDeployError(f"--time-budget {text!r}: expected a positive duration such as 90s, 30m or 1h")
    return float(m[1]) * _UNITS[m[2] or "s"]


class Deadline:
    """The search's clock: what is left, and the record of what was not tried for lack of it."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds, self.start = seconds, time.monotonic()
        self.skipped: list[str] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return float("inf") if self.seconds is None else self.seconds - self.elapsed()

    def allows(self, estimate: float | None, what: str, keep: float = 0.0) -> bool:
        """Whether `what`, expected to take `estimate` seconds, fits in what is left with `keep` seconds
        still kept after it (for the finalists' run); records it if not. An unknown estimate fits only
        an unlimited budget."""
        if self.seconds is None or (estimate is not None and estimate + keep <= self.left()):
            return True
        left = max(0.0, self.left())
        if estimate is None:
            self.skip(f"{what}: not tried, its cost could not be estimated and the time budget has {left:.0f} s left")
        else:
            kept = f" with {keep:.0f} s kept for the finalists" if keep else ""
            self.skip(f"{what}: not tried, the time budget has {left:.0f} s left and it was "
                      f"expected to take about {estimate:.0f} s{kept}")
        return False

    def skip(self, line: str) -> None:
        self.skipped.append(line)
