"""`ModelCard`: the preprocessing and label contract of a model, read from model.json or ONNX metadata.

One set of keys, one validation, for every reader: training writes it to model.json, export
copies it into each ONNX file's `metadata_props`, and the runtime, bench, quant and the demo
read it back from either place.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cnndeploy import __version__
from cnndeploy.errors import CheckpointError
from cnndeploy.fileio import read_json
from cnndeploy.artifacts.files import MODEL_JSON

# What any runner needs to feed the model and name its outputs.
PREPROCESSING = ("classes", "channels", "height", "width", "mean", "std")
# What a cnndeploy file also says about itself (absent from a foreign ONNX file).
IDENTITY = ("model", "dataset")
# model.json rebuilds the network, so it needs the architecture's widths as well.
REQUIRED_JSON = ("model", "widths", "classes", "channels", "height", "width", "mean", "std", "dataset")
JSON_VALUED = ("classes", "mean", "std", "widths")
MAX_SIDE = 4096          # no model of ours takes larger images; a bigger claim is a hostile file


class ModelCardError(CheckpointError):
    """model.json or an ONNX file's metadata does not describe a usable model."""


@dataclass(frozen=True)
class ModelCard:
    model: str
    classes: tuple[str, ...]
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str
    widths: dict[str, Any] = field(default_factory=dict)
    dataset_source: str = ""
    dataset_path: str | None = None     # where training read a user's image folder/archive

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width

    # --- model.json -------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: Any, where: str) -> "ModelCard":
        if not isinstance(data, dict):
            raise ModelCardError(f"{where}: expected a JSON object")
        missing = [k for k in REQUIRED_JSON if k not in data]
        if missing:
            raise ModelCardError(f"{where} lacks {missing}")
        if not isinstance(data["widths"], dict):
            raise ModelCardError(f"{where}: cannot build the model it describes ('widths' must be an object "
                                 "of layer widths)")
        return cls._checked(data, where, "cannot build the model it describes")

    @classmethod
    def read(cls, run_dir: str | Path) -> "ModelCard":
        path = Path(run_dir) / MODEL_JSON
        return cls.from_json(read_json(path, what=MODEL_JSON), str(path))

    def to_json(self) -> dict[str, Any]:
        data = {"model": self.model, "widths": self.widths, "num_classes": self.num_classes,
                "classes": list(self.classes), "channels": self.channels, "height": self.height,
                "width": self.width, "mean": list(self.mean), "std": list(self.std), "dataset": self.dataset,
                "dataset_source": self.dataset_source, "cnndeploy_version": __version__}
        if self.dataset_path:
            data["dataset_path"] = self.dataset_path
        return data

    # --- ONNX metadata_props ------------------------------------------------------------------

    @classmethod
    def from_onnx_props(cls, props: Mapping[str, str], where: str, **overrides: Any) -> "ModelCard":
        """From a file's metadata_props; `overrides` (python values) supply or replace keys."""
        merged: dict[str, Any] = {}
        for key, text in props.items():
            if key in JSON_VALUED:
                try:
                    merged[key] = json.loads(text)
                except (ValueError, RecursionError):
                    raise ModelCardError(f"{where}: malformed metadata ({key!r} is not valid JSON)") from None
            else:
                merged[key] = text
        merged.update({k: v for k, v in overrides.items() if v is not None})
        missing = [k for k in PREPROCESSING if k not in merged]
        if missing:
            raise ModelCardError(f"{where} lacks the metadata {missing}: it was not exported by cnndeploy. "
                                 "Pass them explicitly, e.g. Classifier(path, classes=[...], mean=[...], "
                                 "std=[...]) (channels/height/width default to the input shape)")
        merged.setdefault("model", "")
        merged.setdefault("dataset", "")
        if not isinstance(merged.get("widths", {}), dict):
            merged["widths"] = {}
        return cls._checked(merged, where)

    def to_onnx_props(self) -> dict[str, str]:
        props = {"classes": json.dumps(list(self.classes)), "channels": str(self.channels),
                 "height": str(self.height), "width": str(self.width), "mean": json.dumps(list(self.mean)),
                 "std": json.dumps(list(self.std)), "model": self.model, "dataset": self.dataset,
                 "widths": json.dumps(self.widths), "dataset_source": self.dataset_source,
                 "cnndeploy_version": __version__,
                 "preprocessing": "float32 NCHW, (pixel/255 - mean) / std per channel"}
        return props

    # --- one validation for both sources ------------------------------------------------------

    @classmethod
    def _checked(cls, d: dict[str, Any], where: str, problem: str = "malformed metadata") -> "ModelCard":
        try:
            classes = d["classes"]
            if not isinstance(classes, list) or not all(isinstance(c, (str, int)) for c in classes):
                raise ValueError("classes must be a list of class names")
            card = cls(model=str(d["model"]), classes=tuple(str(c) for c in classes),
                       channels=_int(d["channels"]), height=_int(d["height"]), width=_int(d["width"]),
                       mean=_floats(d["mean"]), std=_floats(d["std"]), dataset=str(d["dataset"]),
                       widths=dict(d.get("widths") or {}), dataset_source=str(d.get("dataset_source") or ""),
                       dataset_path=str(d["dataset_path"]) if d.get("dataset_path") else None)
        except (ValueError, TypeError, OverflowError) as e:
            raise ModelCardError(f"{where}: {problem} ({e})") from None
        c = card.channels
        if (not card.classes or c not in (1, 3) or not 1 <= min(card.height, card.width)
                or max(card.height, card.width) > MAX_SIDE or len(card.mean) != c or len(card.std) != c
                or not all(math.isfinite(v) for v in card.mean)
                or not all(math.isfinite(v) and v > 0 for v in card.std)):
            raise ModelCardError(
                f"{where}: malformed metadata: expected classes (a non-empty list), channels 1 or 3, height "
                f"and width from 1 to {MAX_SIDE}, and {c} finite mean and positive std values; got "
                f"{len(card.classes)} classes, channels {c}, {card.height}x{card.width}, mean "
                f"{list(card.mean)}, std {list(card.std)}")
        return card


def _int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


def _floats(value: Any) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of numbers, got {type(value).__name__}")
    return tuple(float(v) for v in value)
