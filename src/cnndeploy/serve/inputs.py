"""What a demo visitor sends: untrusted bytes turned into a picture, or one friendly message.

Gradio-free and torch-free so it can be tested directly. Every message here reaches a browser,
so none of them may hold a path, a traceback or an exception's own text.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os

import numpy as np
from PIL import Image, ImageOps

from cnndeploy.errors import CnnDeployError
from cnndeploy.images import DECODE_ERRORS, FORMATS, MAX_PIXELS, open_image
from cnndeploy.runtime.classifier import _upright_8bit  # EXIF rotation, first frame, 16-bit grey

SIDE = int(MAX_PIXELS ** 0.5)
NOT_AN_IMAGE = ("That file is not an image this demo can read (it may be corrupt or cut short). "
                f"Upload a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} picture.")
TOO_MANY_PIXELS = (f"That image has too many pixels (a possible decompression bomb). The limit is "
                   f"{SIDE}×{SIDE} pixels.")
EMPTY_DRAWING = "The drawing pad is empty: draw a digit first."
NO_IMAGE = "No image was given: upload a picture first."
UPLOAD_GONE = ("That upload is no longer on the server (each upload is deleted once it has been classified): "
               "upload the picture again.")
log = logging.getLogger(__name__)


class UserInputError(CnnDeployError):
    """Something a visitor sent that cannot be classified; the message is safe to show them."""


def too_large(max_bytes: int) -> str:
    return f"That file is larger than the {max_bytes / 1e6:g} MB upload limit of this demo."


def read_upload(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of an uploaded file, refusing files over `max_bytes` before reading them."""
    try:
        if os.path.getsize(path) > max_bytes:
            raise UserInputError(too_large(max_bytes))
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        raise UserInputError(NOT_AN_IMAGE) from None


def data_url_bytes(url: str, max_bytes: int) -> bytes:
    """The payload of a `data:image/...;base64,` URL (how browsers send pasted images)."""
    _, _, payload = url.partition(",")
    if len(payload) * 3 // 4 > max_bytes:  # base64 is 4 characters per 3 bytes: refuse before decoding
        raise UserInputError(too_large(max_bytes))
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise UserInputError(NOT_AN_IMAGE) from None


def decode(data: bytes) -> Image.Image:
    """Fully decoded, upright 8-bit L/LA/P/RGB/RGBA image from untrusted bytes, or a UserInputError.

    Decoding everything now (not lazily in the model) is what turns a truncated file into this
    one message instead of an error somewhere later.
    """
    try:
        # open_image refuses more than MAX_PIXELS before decoding; Pillow's own guard (an error
        # above twice Image.MAX_IMAGE_PIXELS) fires even earlier, in Image.open, for real bombs.
        with open_image(data) as img:
            img.load()
            return _common_mode(_upright_8bit(img))
    except Image.DecompressionBombError:
        raise UserInputError(TOO_MANY_PIXELS) from None
    except ValueError as e:
        # open_image raises ValueError for its pixel cap; Pillow for some malformed headers.
        raise UserInputError(TOO_MANY_PIXELS if "pixels is more than" in str(e) else NOT_AN_IMAGE) from None
    except DECODE_ERRORS as e:  # what Pillow's parsers raise on damaged files, of many types
        log.debug("undecodable upload: %s: %s", type(e).__name__, e)
        raise UserInputError(NOT_AN_IMAGE) from None


def _common_mode(img: Image.Image) -> Image.Image:
    """CMYK, LAB, 32-bit and other TIFF/JPEG modes as RGB, so every later step sees a usual mode."""
    if img.mode in ("1", "L", "LA", "P", "RGB", "RGBA"):
        return img
    try:
        return img.convert("RGB")
    except ValueError:
        raise UserInputError(NOT_AN_IMAGE) from None


def flatten(img: Image.Image, background: int = 255) -> Image.Image:
    """RGB with any transparency composited on a plain background (paint programs leave it)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (background,) * 3 + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img


def as_mnist_digit(img: Image.Image) -> Image.Image:
    """Greyscale, white digit on black like MNIST: a light background is inverted automatically.

    The border decides, not the mean: a thick dark digit on white can darken the mean, but the
    border of a digit picture is background.
    """
    grey = flatten(img).convert("L")
    arr = np.asarray(grey)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return ImageOps.invert(grey) if np.median(border) > 127 else grey


def centre_digit(img: Image.Image, size: tuple[int, int] = (28, 28), box: float = 20 / 28) -> Image.Image:
    """Crop a drawn digit and centre it by mass the way MNIST was made (20×20 box in 28×28).

    A digit drawn small in a corner of a large pad is otherwise a few blurred pixels.
    """
    arr = np.asarray(img.convert("L"), dtype=np.float32)
    ys, xs = np.nonzero(arr > 40)
    if len(xs) == 0:
        raise UserInputError(EMPTY_DRAWING)
    crop = img.convert("L").crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    scale = box * min(size) / max(crop.size)
    digit = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.LANCZOS)
    mass = np.asarray(digit, dtype=np.float64)
    total = mass.sum() or 1.0
    cy = (mass.sum(1) * np.arange(digit.height)).sum() / total
    cx = (mass.sum(0) * np.arange(digit.width)).sum() / total
    out = Image.new("L", size, 0)
    left = int(np.clip(round(size[0] / 2 - cx), 0, size[0] - digit.width))
    top = int(np.clip(round(size[1] / 2 - cy), 0, size[1] - digit.height))
    out.paste(digit, (left, top))
    return out


def model_view(chw: np.ndarray, mean: np.ndarray, std: np.ndarray, display: int = 224) -> Image.Image:
    """The normalised tensor a model received, back as pixels and enlarged without smoothing."""
    pixels = (chw * std[:, None, None] + mean[:, None, None]) * 255.0
    arr = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    factor = max(1, display // max(img.size))
    return img.resize((img.width * factor, img.height * factor), Image.NEAREST)
