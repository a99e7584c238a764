"""Model registry: each model carries what export, bench and serve need to know about it.

Like timm's registry, a model is registered once with its builder, default widths and a
default training recipe; other code asks the registry instead of repeating flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class Recipe:
    """Default training hyper-parameters for one model on one kind of dataset."""

    epochs: int
    batch_size: int          # images per optimizer step
    lr: float                # peak learning rate of the warm-up + decay schedule
    weight_decay: float = 5e-4   # L2 on conv/linear weights only (not BN, not biases)
    label_smoothing: float = 0.1
    warmup: float = 0.15     # fraction of all steps spent warming up linearly
    schedule: str = "linear"     # after the warm-up: linear, cosine (both to zero) or onecycle
    ema: float = 0.0         # decay of the weights' moving average that is evaluated and saved; 0: off
    random_erasing: float = 0.0  # probability of erasing a random rectangle of a training image


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any]                 # default widths, passed as keyword arguments
    recipes: dict[str, Recipe]               # keyed by "mnist" / "cifar10"; others use "cifar10"
    summary: str
    paper: str = ""
    default_input: tuple[int, int, int] = (3, 32, 32)   # C, H, W; 1x28x28 (MNIST) works as well

    def recipe(self, dataset: str) -> Recipe:
        return self.recipes.get(dataset, self.recipes["cifar10"])


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; expected one of {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int, channels: int, height: int, width: int,
                 **widths: Any) -> nn.Module:
    """Build a registered model; `widths` override the defaults (as recorded in model.json)."""
    spec = get_spec(name)
    unknown = set(widths) - set(spec.defaults)
    if unknown:
        raise ValueError(f"{name} has no width argument(s) {sorted(unknown)}; "
                         f"expected some of {sorted(spec.defaults)}")
    kwargs = {**spec.defaults, **widths}
    _check_widths(name, kwargs)
    return spec.builder(num_classes, channels, height, width, **kwargs)


def _check_widths(name: str, kwargs: dict[str, Any]) -> None:
    for key, value in kwargs.items():
        if value is None:
            continue
        if key == "dropout":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name}: dropout={value!r} must be a number in [0, 1)")
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            raise ValueError(f"{name}: width {key}={value!r} must hold positive integers")
