"""MNIST from its four canonical IDX files (gzipped or not)."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from cnndeploy.data.types import ImageDataset, check_split
from cnndeploy.errors import DatasetError

FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
         "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
CLASSES = [str(i) for i in range(10)]
MEAN, STD = (0.1307,), (0.3081,)
SUBDIRS = ("mnist", "MNIST/raw", "MNIST", ".")  # ours, torchvision's, and the files at the top


def find_mnist(root: Path) -> Path | None:
    """The folder under `root` that holds all four IDX files, or None."""
    for sub in SUBDIRS:
        d = root / sub
        if all(_idx_file(d, stem) is not None for stem in FILES.values()):
            return d
    return None


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


MAX_IDX_BYTES = 1 << 32   # 4 GiB: far above any IDX dataset, far below what a header can claim


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file: magic 0x0000 <type 0x08 = uint8> <ndim>, big-endian dims, then data.

    The header is checked before the body is read, and the body is read only up to the size the
    header declares (plus one byte to detect extra data), so a gzip bomb is never inflated.
    """
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            return _parse_idx(f, path)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: cannot read ({e}); expected an IDX file, optionally gzipped") from None


def _parse_idx(f, path: Path) -> np.ndarray:
    magic = f.read(4)
    if len(magic) < 4 or magic[0:2] != b"\0\0" or magic[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (bad magic {magic.hex()})")
    ndim = magic[3]
    raw_dims = f.read(4 * ndim)
    if ndim == 0 or len(raw_dims) < 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header ({4 + len(raw_dims)} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    expected = math.prod(dims)
    if expected > MAX_IDX_BYTES:
        raise DatasetError(f"{path}: the IDX header claims {dims} ({expected} bytes), more than the "
                           f"{MAX_IDX_BYTES} allowed")
    body = f.read(expected + 1)
    if len(body) != expected:
        held = f"{len(body)}" if len(body) <= expected else "more"
        raise DatasetError(f"{path}: truncated or oversized IDX data: header says {dims} "
                           f"({expected} bytes), file holds {held}")
    try:
        return np.frombuffer(body, dtype=np.uint8).reshape(dims)
    except ValueError as e:  # e.g. (0, 2**31, 2**31): no data, but no such array either
        raise DatasetError(f"{path}: the IDX dimensions {dims} do not make an array ({e})") from None


def load_mnist(folder: Path) -> ImageDataset:
    arrays = {key: read_idx(_idx_file(folder, stem)) for key, stem in FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1:
            raise DatasetError(f"{folder}: {split} images must be [N, H, W] and labels [N], "
                               f"got {x.shape} and {y.shape}")
        arrays[f"{split}_x"] = x[:, None].copy()
        arrays[f"{split}_y"] = y.astype(np.int64)
        check_split(arrays[f"{split}_x"], arrays[f"{split}_y"], 10, f"{folder} ({split})")
    return ImageDataset(name="mnist", source="mnist-idx", path=str(folder), classes=CLASSES,
                        mean=MEAN, std=STD, **arrays)
