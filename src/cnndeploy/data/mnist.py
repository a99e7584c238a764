"""MNIST from its four canonical IDX files (gzipped or not)."""

from __future__ import annotations

import gzip
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


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file: magic 0x0000 <type 0x08 = uint8> <ndim>, big-endian dims, then data."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: cannot read ({e}); expected an IDX file, optionally gzipped") from None
    if len(raw) < 4 or raw[0:2] != b"\0\0" or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: truncated or oversized IDX data: header says {dims} "
                           f"({expected} bytes), file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist(folder: Path) -> ImageDataset:
    arrays = {key: read_idx(_idx_file(folder, stem)) for key, stem in FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3:
            raise DatasetError(f"{folder}: {split} images must be [N, H, W], got {x.shape}")
        arrays[f"{split}_x"] = x[:, None].copy()
        arrays[f"{split}_y"] = y.astype(np.int64)
        check_split(arrays[f"{split}_x"], arrays[f"{split}_y"], 10, f"{folder} ({split})")
    return ImageDataset(name="mnist", source="mnist-idx", path=str(folder), classes=CLASSES,
                        mean=MEAN, std=STD, **arrays)
