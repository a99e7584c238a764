"""The demo's decoding of untrusted uploads (serve/inputs.py), without Gradio or a model."""

import struct
import time

import numpy as np

from cnndeploy.runtime.classifier import Classifier
from cnndeploy.serve import inputs


def many_page_tiff(pages: int) -> bytes:
    """A greyscale TIFF of `pages` 2x2 pages, each a 102-byte directory: page 0 is [[0, 255], [128, 64]],
    every other page 7s. 20,000 pages are 2 MB; Pillow's n_frames walks them all (about 5 s here)."""
    def entry(tag: int, kind: int, value: int) -> bytes:
        return struct.pack("<HHII", tag, kind, 1, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, 1, value, 0)

    def directory(strip: int, next_at: int) -> bytes:
        tags = [(256, 3, 2), (257, 3, 2), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, strip), (278, 3, 2),
                (279, 4, 4)]
        return struct.pack("<H", len(tags)) + b"".join(entry(*t) for t in tags) + struct.pack("<I", next_at)

    size, start = 102, 16
    body = [directory(8 if i == 0 else 12, start + (i + 1) * size if i + 1 < pages else 0) for i in range(pages)]
    return b"II*\x00" + struct.pack("<I", start) + bytes([0, 255, 128, 64]) + bytes([7] * 4) + b"".join(body)


def test_a_many_page_tiff_costs_its_first_page_only():
    data = many_page_tiff(20_000)
    t = time.perf_counter()
    img = inputs.decode(data)
    assert time.perf_counter() - t < 0.5   # walking every page took ~5 s (48,000 pages: ~30 s)
    assert np.asarray(img).tolist() == [[0, 255], [128, 64]]
    t = time.perf_counter()
    assert np.asarray(Classifier._as_pil(data)).tolist() == [[0, 255], [128, 64]]   # the runtime's own path
    assert time.perf_counter() - t < 0.5
