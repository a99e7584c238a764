"""`Classifier`: run a cnndeploy ONNX file on any image with numpy, pillow and onnxruntime only.

This module is what apps embed, so it must not import torch (a test checks). Everything it
needs — class names, input size, channels, mean and std — comes from the file's metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from cnndeploy.errors import CnnDeployError
from cnndeploy.images import open_image

ImageLike = Union[Image.Image, str, os.PathLike, np.ndarray]
REQUIRED = ("classes", "channels", "height", "width", "mean", "std")


class ModelFileError(CnnDeployError):
    """An ONNX file that this runtime cannot use as a classifier."""


class ImageInputError(CnnDeployError):
    """An input that is not a readable image."""


def _metadata(props: dict[str, str], where: str, overrides: dict) -> dict:
    merged = {**props, **{k: json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
                          for k, v in overrides.items() if v is not None}}
    missing = [k for k in REQUIRED if k not in merged]
    if missing:
        raise ModelFileError(f"{where} lacks the metadata {missing}: it was not exported by cnndeploy. "
                             "Pass them explicitly, e.g. Classifier(path, classes=[...], mean=[...], "
                             "std=[...]) (channels/height/width default to the input shape)")
    try:
        return {"classes": [str(c) for c in json.loads(merged["classes"])],
                "channels": int(merged["channels"]), "height": int(merged["height"]),
                "width": int(merged["width"]),
                "mean": np.asarray(json.loads(merged["mean"]), np.float32),
                "std": np.asarray(json.loads(merged["std"]), np.float32),
                "model": merged.get("model", ""), "dataset": merged.get("dataset", "")}
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{where}: malformed metadata ({e})") from None


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """HW, HWC or CHW arrays (uint8 0..255, or floats 0..1 / 0..255) -> a PIL image."""
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ImageInputError(f"expected an image array shaped HxW, HxWxC or CxHxW, got {list(arr.shape)}")
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
        raise ImageInputError(f"expected 1, 3 or 4 channels, got an array shaped {list(arr.shape)}")
    if arr.dtype.kind not in "uif" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
        raise ImageInputError(f"expected finite numeric pixels, got {arr.dtype}")
    if arr.dtype != np.uint8:
        scale = 255.0 if arr.dtype.kind == "f" and arr.max(initial=0) <= 1.0 else 1.0
        arr = np.clip(arr.astype(np.float64) * scale, 0, 255).astype(np.uint8)
    return Image.fromarray(arr.squeeze(2) if arr.ndim == 3 and arr.shape[2] == 1 else arr)


def _upright_8bit(img: Image.Image) -> Image.Image:
    """Apply EXIF rotation, take the first frame, and scale 16-bit grey to 8 bits."""
    img = ImageOps.exif_transpose(img) or img
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
        img = img.copy()
    if img.mode.startswith("I;16"):
        img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8))
    return img


class Classifier:
    """Top-k classification with a cnndeploy ONNX file.

    >>> clf = Classifier("runs/lenet5-mnist/model.onnx")
    >>> clf.classify("digit.png")          # [("7", 0.98), ("1", 0.01), ("9", 0.003)]
    """

    def __init__(self, path: str | os.PathLike, *, providers: Sequence[str] | None = None,
                 threads: int | None = None, **metadata) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"ONNX file not found: {self.path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime raises its own exception types for broken files
            raise ModelFileError(f"{self.path} is not a loadable ONNX model ({str(e).splitlines()[0]})") from None
        inp = self.session.get_inputs()[0]
        shape = inp.shape
        if len(shape) != 4 or inp.type != "tensor(float)":
            raise ModelFileError(f"{self.path}: expected one float32 NCHW input, got {inp.type} {shape}")
        defaults = {k: v for k, v in zip(("channels", "height", "width"), shape[1:]) if isinstance(v, int)}
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta = _metadata({**{k: str(v) for k, v in defaults.items()}, **props}, str(self.path), metadata)
        self.input_name, self.output_name = inp.name, self.session.get_outputs()[0].name
        self.classes: list[str] = self.meta["classes"]

    def preprocess(self, image: ImageLike) -> np.ndarray:
        """Any image -> float32 [C, H, W], resized and normalised as the model was trained."""
        img = _upright_8bit(self._as_pil(image))
        img = img.convert("L" if self.meta["channels"] == 1 else "RGB")
        size = (self.meta["width"], self.meta["height"])
        if img.size != size:
            img = img.resize(size, Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return (arr - self.meta["mean"][:, None, None]) / self.meta["std"][:, None, None]

    @staticmethod
    def _as_pil(image: ImageLike) -> Image.Image:
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, np.ndarray):
            return _array_to_pil(image)
        try:
            with open_image(image) as img:
                img.load()
                return img
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ImageInputError(f"{image}: not a readable image ({e})") from None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run preprocessed float32 NCHW inputs; returns logits [N, num_classes]."""
        expected = (self.meta["channels"], self.meta["height"], self.meta["width"])
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise ImageInputError(f"expected a batch shaped [N, {', '.join(map(str, expected))}], "
                                  f"got {list(batch.shape)}")
        if not np.isfinite(batch).all():
            raise ImageInputError("the input holds NaN or infinite values")
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]
        if not np.isfinite(out).all():
            raise ModelFileError(f"{self.path} produced NaN or infinite logits; not a prediction")
        return out

    def predict(self, images: Iterable[ImageLike], top_k: int = 3) -> list[list[tuple[str, float]]]:
        """Top-k (label, probability) for each image."""
        batch = np.stack([self.preprocess(im) for im in images])
        logits = self.logits(batch)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        k = max(1, min(top_k, len(self.classes)))
        order = np.argsort(-probs, axis=1)[:, :k]
        return [[(self.classes[j], float(p[j])) for j in row] for p, row in zip(probs, order)]

    def classify(self, image: ImageLike, top_k: int = 3) -> list[tuple[str, float]]:
        return self.predict([image], top_k)[0]
