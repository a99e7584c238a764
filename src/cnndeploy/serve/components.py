"""Gradio image inputs whose decoding is ours, so every bad upload becomes one friendly message.

A stock `gr.Image` opens uploads with `PIL.Image.open` on any format Pillow knows (EPS
included) before our function runs, and a corrupt file or a decompression bomb then fails inside
Gradio with a message nobody can act on. These factories keep Gradio's components (and front
end) and replace only the server-side `preprocess` of the instance. Not subclasses: Gradio's
component metaclass writes a `.pyi` stub beside any module that subclasses a component.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from cnndeploy.serve import inputs


def friendly(message: str) -> gr.Error:
    """A gr.Error shown as it is; expected visitor mistakes are not server faults worth a traceback."""
    return gr.Error(message, title="Cannot classify this", print_exception=False)


def _payload_bytes(payload: Any, max_file_size: int) -> bytes:
    if payload.url and payload.url.startswith("data:"):
        # a pasted image arrives inline and never meets the upload size limit: apply it here
        return inputs.data_url_bytes(payload.url, max_file_size)
    if payload.path:
        return inputs.read_upload(payload.path, max_file_size)
    raise inputs.UserInputError(inputs.NO_IMAGE)


def upload_image(*, max_file_size: int, **kwargs: Any) -> gr.Image:
    """gr.Image whose uploads are decoded by `inputs.decode`: format allow-list, pixel cap, full decode."""
    image = gr.Image(type="pil", **kwargs)

    def preprocess(payload: Any) -> Image.Image | None:
        if payload is None:
            return None
        try:
            return inputs.decode(_payload_bytes(payload, max_file_size))
        except inputs.UserInputError as e:
            raise friendly(str(e)) from None
    image.preprocess = preprocess  # an instance attribute: Gradio calls block.preprocess(payload)
    return image


def digit_pad(**kwargs: Any) -> gr.Sketchpad:
    """gr.Sketchpad flattened to greyscale on white; a drawing that cannot be read is a friendly error."""
    pad = gr.Sketchpad(type="pil", image_mode="L", **kwargs)
    stock = pad.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return stock(payload)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise friendly(inputs.NOT_AN_IMAGE) from None
    pad.preprocess = preprocess
    return pad
