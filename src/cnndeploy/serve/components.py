"""Gradio image inputs whose decoding is ours, so every bad upload becomes one friendly message.

A stock `gr.Image` opens uploads with `PIL.Image.open` on any format Pillow knows (EPS
included) before our function runs, and a corrupt file or a decompression bomb then fails inside
Gradio with a message nobody can act on. These factories keep Gradio's components (and front
end) and replace only the server-side `preprocess` of the instance. Not subclasses: Gradio's
component metaclass writes a `.pyi` stub beside any module that subclasses a component.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import gradio as gr
from PIL import Image

from cnndeploy.serve import inputs

# The files Gradio's /upload route stored for visitors (Blocks.upload_file_set), or None outside a server.
Uploads = Callable[[], "set[str] | None"]


def friendly(message: str) -> gr.Error:
    """A gr.Error shown as it is; expected visitor mistakes are not server faults worth a traceback."""
    return gr.Error(message, title="Cannot classify this", print_exception=False)


def in_upload_folder(path: str | os.PathLike) -> bool:
    """Whether `path` lies inside Gradio's upload folder (GRADIO_TEMP_DIR, else <tmp>/gradio)."""
    from gradio.utils import get_upload_folder

    root, real = os.path.realpath(get_upload_folder()), os.path.realpath(path)
    return real != root and os.path.commonpath([root, real]) == root


class UploadReader:
    """Reads a visitor's uploaded file once, then deletes it, so that a long-running demo's cache cannot
    fill up (refused files included).

    Only files Gradio's /upload route stored (in `uploads()`) and inside its upload folder are deleted:
    never an example, a component's default value or a file a Python caller passed by path. Gradio
    names an upload by its content and file name, so identical uploads (a burst from one client, a
    double click) share one path: the bytes of the last few deleted ones are kept in memory for a
    minute (at most 4 uploads' worth) and serve the requests still queued for them.
    """

    KEEP_SECONDS = 60.0

    def __init__(self, max_file_size: int, uploads: Uploads) -> None:
        self.max_file_size, self.uploads = max_file_size, uploads
        self._recent: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, path: str) -> bytes:
        try:
            data = inputs.read_upload(path, self.max_file_size)
        except inputs.UserInputError:
            gone = not os.path.lexists(path) and in_upload_folder(path)
            self._discard(path, None)   # refused (too large, unreadable): deleted all the same
            kept = self._kept(path) if gone else None
            if gone and kept is None:
                raise inputs.UserInputError(inputs.UPLOAD_GONE) from None
            if kept is None:
                raise
            return kept
        self._discard(path, data)
        return data

    def _kept(self, path: str) -> bytes | None:
        with self._lock:
            self._expire()
            kept = self._recent.get(path)
        return kept[1] if kept else None

    def _discard(self, path: str, data: bytes | None) -> None:
        uploads = self.uploads()
        if uploads is None or path not in uploads or not in_upload_folder(path):
            return
        uploads.discard(path)
        Path(path).unlink(missing_ok=True)   # another request for the same upload may have been first
        try:
            Path(path).parent.rmdir()   # the per-content folder Gradio made for it, if now empty
        except OSError:
            pass
        if data is not None:
            with self._lock:
                self._recent[path] = (time.monotonic(), data)
                self._expire()

    def _expire(self) -> None:
        now, budget = time.monotonic(), 4 * self.max_file_size
        while self._recent and (now - next(iter(self._recent.values()))[0] > self.KEEP_SECONDS
                                or sum(len(d) for _, d in self._recent.values()) > budget):
            self._recent.popitem(last=False)


def _payload_bytes(payload: Any, reader: UploadReader) -> bytes:
    if payload.url and payload.url.startswith("data:"):
        # a pasted image arrives inline and never meets the upload size limit: apply it here
        return inputs.data_url_bytes(payload.url, reader.max_file_size)
    if payload.path:
        return reader.read(payload.path)
    raise inputs.UserInputError(inputs.NO_IMAGE)


def upload_image(*, max_file_size: int, uploads: Uploads = lambda: None, **kwargs: Any) -> gr.Image:
    """gr.Image whose uploads are decoded by `inputs.decode`: format allow-list, pixel cap, full decode.

    The uploaded file is deleted once read, decodable or not (see `UploadReader`)."""
    image = gr.Image(type="pil", **kwargs)
    reader = UploadReader(max_file_size, uploads)

    def preprocess(payload: Any) -> Image.Image | None:
        if payload is None:
            return None
        try:
            return inputs.decode(_payload_bytes(payload, reader))
        except inputs.UserInputError as e:
            raise friendly(str(e)) from None
    image.preprocess = preprocess  # an instance attribute: Gradio calls block.preprocess(payload)
    return image


def digit_pad(**kwargs: Any) -> gr.Sketchpad:
    """gr.Sketchpad flattened to greyscale on white; a drawing that cannot be read is a friendly error.

    Its files (a few kB each) are left to build_blocks's delete_cache: Gradio's own preprocess reads
    them, and may be sent the same ones again."""
    pad = gr.Sketchpad(type="pil", image_mode="L", **kwargs)
    stock = pad.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return stock(payload)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise friendly(inputs.NOT_AN_IMAGE) from None
    pad.preprocess = preprocess
    return pad
