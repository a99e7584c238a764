"""Opening untrusted image files: a format allow-list and a pixel cap, shared by readers and runtime."""

from __future__ import annotations

import io
import os
import struct

from PIL import Image

MAX_PIXELS = 4096 * 4096  # decompression-bomb guard, far below Pillow's own
FORMATS = ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM"]  # no EPS/PDF: never call Ghostscript
# What Pillow raises on a damaged file while opening, seeking frames, reading EXIF or decoding
# (a broken TIFF frame raises TypeError, for one; found by tests/test_reliability_fuzz.py).
DECODE_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, EOFError, SyntaxError,
                 ZeroDivisionError, struct.error, Image.DecompressionBombError)


def open_image(source: bytes | str | os.PathLike) -> Image.Image:
    """Image.open restricted to plain raster formats; raises ValueError above MAX_PIXELS."""
    im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=FORMATS)
    if im.width * im.height > MAX_PIXELS:
        im.close()
        raise ValueError(f"{im.width}x{im.height} pixels is more than the {MAX_PIXELS} allowed")
    return im
