"""`Classifier`: run a cnndeploy ONNX file on any image with numpy, pillow and onnxruntime (or
OpenVINO, `backend="openvino"`) only.

This module is what apps embed, so it must not import torch (a test checks). Everything it
needs — class names, input size, channels, mean and std — comes from the file's metadata.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from cnndeploy.artifacts.card import ModelCard, ModelCardError
from cnndeploy.errors import CnnDeployError
from cnndeploy.images import DECODE_ERRORS, open_image
from cnndeploy.runtime import topk

ImageLike = Union[Image.Image, str, os.PathLike, bytes, np.ndarray]
BACKENDS = ("onnxruntime", "openvino")   # what Classifier(backend=...) runs the file with


class ModelFileError(ModelCardError):
    """An ONNX file that this runtime cannot use as a classifier."""


class ImageInputError(CnnDeployError):
    """An input that is not a readable image."""


def _tensors(graph) -> Iterable:
    """Every TensorProto of an ONNX graph: initializers, attributes, and those of subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def check_external_data(path: Path) -> None:
    """Refuse an ONNX file whose external data lies outside its folder (../, absolute, symlink).

    onnxruntime refuses these too; this is our own check, made first, with our message. It
    needs the onnx package (a cnndeploy dependency); an app that embeds the runtime without it
    keeps onnxruntime's check.
    """
    try:
        import onnx
    except ImportError:
        return
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # a file onnx cannot parse: onnxruntime reports it below
        return
    folder = path.resolve().parent
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = folder / location
        rel = PurePosixPath(location.replace("\\", "/"))
        if (not location or rel.is_absolute() or ".." in rel.parts or target.is_symlink()
                or folder not in target.resolve().parents):
            raise ModelFileError(f"{path} is not a loadable ONNX model (tensor {tensor.name!r} reads its "
                                 f"data from {location!r}, which is not a plain file inside the model's "
                                 "folder: refused; expected the weights inside the .onnx file or in a "
                                 "file beside it)")


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
    """Take the first frame, apply EXIF rotation, scale 16-bit grey to 8 bits: a decoded copy.

    Never asks for n_frames: a TIFF counts its pages by walking every one (48,000 pages of 5 MB: ~30 s).
    """
    if img.tell() != 0:
        img.seek(0)
    out = ImageOps.exif_transpose(img)  # a decoded copy, rotated if EXIF says so
    if out is None or out is img:
        out = img.copy()
    if out.mode.startswith("I;16"):
        out = Image.fromarray((np.asarray(out, dtype=np.uint16) >> 8).astype(np.uint8))
    return out


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """img.convert(mode), through RGB where Pillow has no direct conversion (LAB -> L)."""
    try:
        return img.convert(mode)
    except ValueError:
        try:
            return img.convert("RGB").convert(mode)
        except ValueError as e:
            raise ImageInputError(f"cannot convert a {img.mode} image to {mode} ({e})") from None


def _dims(shape) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


class SessionRunner:
    """An onnxruntime session as a checked runner: float32 NCHW batch -> logits [N, classes].

    A file may fix its batch size (often 1): larger batches are then run that many images at a
    time. The output must be [N, classes]; that is checked from the session's metadata at load
    and on every result, so a foreign layout is one clear error rather than a numpy one later.
    """

    def __init__(self, session, where: str, num_classes: int | None = None) -> None:
        self.session, self.where, self.num_classes = session, where, num_classes
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        first = inp.shape[0] if inp.shape else None
        self.fixed_batch = first if isinstance(first, int) and first > 0 else None
        shape = list(out.shape or [])
        width = shape[-1] if shape else None
        if shape and (len(shape) != 2 or (isinstance(shape[0], int) and self.fixed_batch
                                          and shape[0] != self.fixed_batch)):
            raise ModelFileError(f"{where}: the model's output is shaped {_dims(shape)}; expected "
                                 f"[N, {num_classes or 'classes'}] (one row of logits per image)")
        if num_classes is not None and isinstance(width, int) and width != num_classes:
            raise ModelFileError(f"{where}: the model outputs {width} logits but its metadata names "
                                 f"{num_classes} classes; expected one class name per logit")

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, np.float32)})[0]
        except MemoryError:
            raise
        except Exception as e:  # onnxruntime and OpenVINO raise their own exception types
            runtime = getattr(self.session, "runtime", "onnxruntime")
            raise ModelFileError(f"{self.where}: {runtime} failed on a batch shaped {list(x.shape)} "
                                 f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n, b = len(batch), self.fixed_batch
        if b is None or n == b:
            out = self._run(batch)
        else:  # a fixed batch: run it in chunks of b, padding the last one
            outs = []
            for start in range(0, n, b):
                chunk = batch[start:start + b]
                if len(chunk) < b:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - len(chunk), axis=0)])
                outs.append(self._checked(self._run(chunk), b)[:n - start])
            out = np.concatenate(outs) if outs else np.zeros((0, self.num_classes or 0), np.float32)
        return self._checked(out, n)

    def _checked(self, out: np.ndarray, n: int) -> np.ndarray:
        out = np.asarray(out)
        if out.ndim != 2 or len(out) != n or (self.num_classes is not None and out.shape[1] != self.num_classes):
            raise ModelFileError(f"{self.where}: the model's output for {n} image(s) is shaped {list(out.shape)}; "
                                 f"expected [{n}, {self.num_classes or 'classes'}] (one row of logits per image)")
        return out


class Classifier:
    """Top-k classification with a cnndeploy ONNX file.

    >>> clf = Classifier("runs/lenet5-mnist/model.onnx")
    >>> clf.classify("digit.png")          # [("7", 0.98), ("1", 0.01), ("9", 0.003)]
    """

    def __init__(self, path: str | os.PathLike, *, providers: Sequence[str] | None = None,
                 threads: int | None = None, backend: str = "onnxruntime", precision: str = "fp32",
                 **metadata) -> None:
        self.path = Path(path)
        if backend not in BACKENDS:
            raise CnnDeployError(f"Classifier backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if backend == "openvino" and providers:
            raise CnnDeployError("Classifier providers are onnxruntime's execution providers; the openvino "
                                 "backend runs on OpenVINO's CPU plugin: pass one of them, not both")
        if backend != "openvino" and precision != "fp32":
            raise CnnDeployError(f"Classifier precision {precision!r}: only the openvino backend computes "
                                 "an FP32 file in another precision (bf16)")
        self._runtime_module(backend)  # a missing runtime is said first, with how to install it
        if not self.path.is_file():
            raise ModelFileError(f"ONNX file not found: {self.path}")
        check_external_data(self.path)
        self.backend = backend
        self.session = (self._openvino_session(precision, threads) if backend == "openvino"
                        else self._ort_session(providers, threads))
        inp = self.session.get_inputs()[0]
        shape = inp.shape
        if len(shape) != 4 or inp.type != "tensor(float)":
            raise ModelFileError(f"{self.path}: expected one float32 NCHW input, got {inp.type} {shape}")
        defaults = {k: v for k, v in zip(("channels", "height", "width"), shape[1:]) if isinstance(v, int)}
        props = self.session.get_modelmeta().custom_metadata_map
        try:
            self.card = ModelCard.from_onnx_props({**{k: str(v) for k, v in defaults.items()}, **props},
                                                  str(self.path), **metadata)
        except ModelCardError as e:
            raise ModelFileError(str(e)) from None
        self.meta = {"classes": list(self.card.classes), "channels": self.card.channels,
                     "height": self.card.height, "width": self.card.width,
                     "mean": np.asarray(self.card.mean, np.float32), "std": np.asarray(self.card.std, np.float32),
                     "model": self.card.model, "dataset": self.card.dataset}
        runner = SessionRunner
        if backend == "openvino":
            from cnndeploy.runtime.openvino import OpenVINORunner as runner
        self.runner = runner(self.session, str(self.path), len(self.card.classes))
        self.input_name, self.output_name = self.runner.input_name, self.runner.output_name
        self.classes: list[str] = self.meta["classes"]

    @staticmethod
    def _runtime_module(backend: str):
        if backend == "openvino":
            from cnndeploy.runtime.openvino import openvino

            return openvino()
        from cnndeploy.runtime.onnxruntime_import import onnxruntime

        return onnxruntime()

    def _ort_session(self, providers: Sequence[str] | None, threads: int | None):
        ort = self._runtime_module("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        from cnndeploy.runtime import int8_cpu

        int8_cpu.faithful(options, self.path, providers)
        try:
            return ort.InferenceSession(str(self.path), options, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime raises its own exception types for broken files
            raise ModelFileError(f"{self.path} is not a loadable ONNX model ({str(e).splitlines()[0]})") from None

    def _openvino_session(self, precision: str, threads: int | None):
        from cnndeploy.runtime.openvino import OpenVINOSession

        return OpenVINOSession(self.path, precision=precision, threads=threads)

    def preprocess(self, image: ImageLike) -> np.ndarray:
        """Any image -> float32 [C, H, W], resized and normalised as the model was trained."""
        img = _to_mode(self._as_pil(image), "L" if self.meta["channels"] == 1 else "RGB")
        size = (self.meta["width"], self.meta["height"])
        if img.size != size:
            img = img.resize(size, Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return (arr - self.meta["mean"][:, None, None]) / self.meta["std"][:, None, None]

    @staticmethod
    def _as_pil(image: ImageLike) -> Image.Image:
        """An upright 8-bit (or float) PIL image, fully decoded and detached from any file."""
        if isinstance(image, np.ndarray):
            return _array_to_pil(image)
        if not isinstance(image, (Image.Image, str, os.PathLike, bytes)):
            raise ImageInputError(f"expected a PIL image, an image path, encoded image bytes or a numpy "
                                  f"array, got {type(image).__name__}")
        try:
            if isinstance(image, Image.Image):
                return _upright_8bit(image)
            with open_image(image) as img:  # decode while the file is open (GIF frames need it)
                return _upright_8bit(img)
        except DECODE_ERRORS as e:
            what = (f"{len(image)} bytes" if isinstance(image, bytes) else
                    f"{image.mode} image of {image.width}x{image.height}" if isinstance(image, Image.Image)
                    else str(image))
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ImageInputError(f"{what}: not a readable image ({why})") from None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run preprocessed float32 NCHW inputs; returns logits [N, num_classes]."""
        expected = (self.meta["channels"], self.meta["height"], self.meta["width"])
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
            got = batch.dtype if isinstance(batch, np.ndarray) else type(batch).__name__
            raise ImageInputError(f"expected a float32 numpy batch (preprocessed with preprocess()), "
                                  f"got {got}")
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise ImageInputError(f"expected a batch shaped [N, {', '.join(map(str, expected))}], "
                                  f"got {list(batch.shape)}")
        if not np.isfinite(batch).all():
            raise ImageInputError("the input holds NaN or infinite values")
        out = self.runner(batch)
        if not np.isfinite(out).all():
            raise ModelFileError(f"{self.path} produced NaN or infinite logits; not a prediction")
        return out

    def predict(self, images: Iterable[ImageLike], top_k: int = 3) -> list[list[tuple[str, float]]]:
        """Top-k (label, probability) for each image."""
        batch = np.stack([self.preprocess(im) for im in images])
        return topk.top_k(self.logits(batch), self.classes, top_k)

    def classify(self, image: ImageLike, top_k: int = 3) -> list[tuple[str, float]]:
        return self.predict([image], top_k)[0]
