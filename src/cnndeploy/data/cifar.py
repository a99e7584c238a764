"""CIFAR-10 from the original python pickles, the binary version, or an image-folder copy."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np

from cnndeploy.data.types import ImageDataset, check_split
from cnndeploy.data.walk import Unusable, read_bounded, read_regular
from cnndeploy.errors import DatasetError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
RECORD = 1 + 3 * 32 * 32  # binary format: one label byte, then 3072 pixel bytes
MAX_BATCH_BYTES = 64 << 20  # a real batch is ~31 MB; a larger member is not CIFAR-10 (or a bomb)
MAX_ARCHIVE_BYTES = 8 * MAX_BATCH_BYTES

# The only globals a genuine CIFAR-10 pickle (or a numpy re-pickle of one) refers to.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global outside `_ALLOWED`, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def unpickle_batch(data: bytes, where: str) -> dict:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # any failure of a hostile or broken pickle is the same user error
        raise DatasetError(f"{where}: not a valid CIFAR-10 python batch ({e})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a dict in a CIFAR-10 batch, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch_arrays(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072 or not isinstance(labels, (list, tuple, np.ndarray)) \
            or len(labels) != len(data):
        raise DatasetError(f"{where}: expected 'data' uint8 [N, 3072] and N 'labels'")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (ValueError, TypeError, OverflowError):
        y = None
    if y is None or y.ndim != 1:
        raise DatasetError(f"{where}: 'labels' must be N integers")
    return data.reshape(-1, 3, 32, 32), y


def _read_members(source: Path, names: list[str]) -> Callable[[str], bytes]:
    """A reader of files by base name, from a folder or from a .tar.gz without extracting it."""
    if source.is_dir():
        def read_dir(name: str) -> bytes:
            p = source / name
            if not p.is_file():
                raise DatasetError(f"{source}: missing {name}")
            try:
                return read_regular(p, MAX_BATCH_BYTES)
            except Unusable as e:
                raise DatasetError(f"{p}: {e.reason}; expected a CIFAR-10 batch file") from None
            except OSError as e:
                raise DatasetError(f"{p}: cannot read ({e.strerror or e})") from None
        return read_dir
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(source, "r:*") as tar:
            total = 0
            for m in tar:
                total += m.size   # listing inflates every member: bound them all, not just the batches
                if total > MAX_ARCHIVE_BYTES:
                    raise DatasetError(f"{source}: its members add up to more than {MAX_ARCHIVE_BYTES >> 20} "
                                       "MB once inflated; a CIFAR-10 archive holds about 180 MB")
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in names:
                    if m.size > MAX_BATCH_BYTES:
                        raise DatasetError(f"{source}: member {m.name} declares {m.size:,} bytes, more "
                                           f"than a CIFAR-10 batch ({MAX_BATCH_BYTES >> 20} MB at most)")
                    found[base] = read_bounded(tar.extractfile(m), MAX_BATCH_BYTES)
    except Unusable as e:
        raise DatasetError(f"{source}: a member is {e.reason}; expected CIFAR-10 batches") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"{source}: cannot read the archive ({first})") from None

    def read_tar(name: str) -> bytes:
        if name not in found:
            raise DatasetError(f"{source}: the archive has no {name}")
        return found[name]
    return read_tar


def _assemble(source: Path, kind: str, parts: dict[str, list[tuple[np.ndarray, np.ndarray]]],
              classes: list[str]) -> ImageDataset:
    arrays = {}
    for split, batches in parts.items():
        arrays[f"{split}_x"] = np.concatenate([b[0] for b in batches])
        arrays[f"{split}_y"] = np.concatenate([b[1] for b in batches])
        check_split(arrays[f"{split}_x"], arrays[f"{split}_y"], len(classes), f"{source} ({split})")
    return ImageDataset(name="cifar10", source=kind, path=str(source), classes=classes,
                        mean=MEAN, std=STD, **arrays)


def load_cifar_python(source: Path) -> ImageDataset:
    """`cifar-10-batches-py/` or `cifar-10-python.tar.gz`."""
    read = _read_members(source, TRAIN_BATCHES + [TEST_BATCH, "batches.meta"])
    parts = {"train": [_batch_arrays(unpickle_batch(read(n), f"{source}:{n}"), f"{source}:{n}")
                       for n in TRAIN_BATCHES],
             "test": [_batch_arrays(unpickle_batch(read(TEST_BATCH), f"{source}:{TEST_BATCH}"),
                                    f"{source}:{TEST_BATCH}")]}
    return _assemble(source, "cifar10-python", parts, CLASSES)


def _binary_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if len(data) == 0 or len(data) % RECORD:
        raise DatasetError(f"{where}: size {len(data)} is not a multiple of the {RECORD}-byte record")
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    return rec[:, 1:].reshape(-1, 3, 32, 32).copy(), rec[:, 0].astype(np.int64)


def load_cifar_binary(source: Path) -> ImageDataset:
    """`cifar-10-batches-bin/` or `cifar-10-binary.tar.gz`."""
    names = [n + ".bin" for n in TRAIN_BATCHES] + [TEST_BATCH + ".bin"]
    read = _read_members(source, names)
    parts = {"train": [_binary_batch(read(n), f"{source}:{n}") for n in names[:-1]],
             "test": [_binary_batch(read(names[-1]), f"{source}:{names[-1]}")]}
    return _assemble(source, "cifar10-binary", parts, CLASSES)
