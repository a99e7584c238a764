"""Find and load a dataset by name (mnist, cifar10) or path (image folder or archive)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from cnndeploy.data import cifar, folder, mnist
from cnndeploy.data.cache import cached
from cnndeploy.data.download import download as fetch
from cnndeploy.data.paths import data_roots
from cnndeploy.data.types import ImageDataset
from cnndeploy.artifacts.card import ModelCard
from cnndeploy.errors import DatasetError

NAMED = ("mnist", "cifar10")


def _cifar_jpeg(path: Path) -> ImageDataset:
    ds = folder.load_image_folder(path, name="cifar10", kind="cifar10-jpeg")
    if ds.classes != cifar.CLASSES:
        raise DatasetError(f"{path}: classes {ds.classes} are not CIFAR-10's {cifar.CLASSES}")
    ds.mean, ds.std = cifar.MEAN, cifar.STD
    return ds


# CIFAR-10 sources in order of preference: lossless formats before the JPEG copy.
CIFAR_SOURCES: list[tuple[str, str, Callable[[Path], ImageDataset]]] = [
    ("cifar-10-batches-py", "cifar10-python", cifar.load_cifar_python),
    ("cifar-10-python.tar.gz", "cifar10-python", cifar.load_cifar_python),
    ("cifar-10-batches-bin", "cifar10-binary", cifar.load_cifar_binary),
    ("cifar-10-binary.tar.gz", "cifar10-binary", cifar.load_cifar_binary),
    ("cifar10-jpeg", "cifar10-jpeg", _cifar_jpeg),
    ("cifar10-jpeg.tar.gz", "cifar10-jpeg", _cifar_jpeg),
]


def _find(name: str, root: Path) -> tuple[str, Path, Callable[[Path], ImageDataset]] | None:
    if name == "mnist":
        found = mnist.find_mnist(root)
        return ("mnist-idx", found, mnist.load_mnist) if found else None
    for entry, kind, loader in CIFAR_SOURCES:
        for candidate in (root / entry, root / "cifar10" / entry):
            if candidate.exists():
                return kind, candidate, loader
        if root.name == entry:
            return kind, root, loader
    return None


def _not_found(name: str, roots: list[tuple[str, Path]]) -> DatasetError:
    looked = "; ".join(f"{why}: {p}" for why, p in roots)
    expected = ("the four MNIST IDX files (train-images-idx3-ubyte.gz, ...) in <dir>/mnist/ or "
                "<dir>/MNIST/raw/" if name == "mnist" else
                "cifar-10-batches-py/, cifar-10-python.tar.gz, cifar-10-binary.tar.gz or "
                "cifar10-jpeg.tar.gz in <dir>")
    return DatasetError(f"dataset {name!r} not found (looked in {looked}); expected {expected}. "
                        f"Pass --data-dir DIR, set CNNDEPLOY_DATA=DIR, or add --download.")


def load_dataset(dataset: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                 download: bool = False, image_size: int | tuple[int, int] | None = None,
                 use_cache: bool = True) -> ImageDataset:
    """Load `mnist`, `cifar10`, or an image folder / archive at a path, as uint8 arrays.

    `image_size` (an int or (height, width)) resizes image-folder datasets; named ones ignore it.
    """
    name = str(dataset)
    if name in NAMED:
        roots = data_roots(data_dir)
        hit = next((h for _, root in roots if (h := _find(name, root))), None)
        if hit is None and download:
            fetch(name, roots[0][1])
            hit = _find(name, roots[0][1])
        if hit is None:
            raise _not_found(name, roots)
        kind, path, loader = hit
        path = path.resolve()
        return cached(kind, path, lambda: loader(path), use_cache=use_cache)
    path = Path(name).expanduser().resolve()
    if not (path.is_dir() or folder.is_archive(path)):
        raise DatasetError(f"unknown dataset {name!r}: expected 'mnist', 'cifar10', or a path to a "
                           "folder or .tar.gz/.zip archive laid out train/<class>/*, test/<class>/*")
    return cached("image-folder", path, lambda: folder.load_image_folder(path, image_size=image_size),
                  use_cache=use_cache, image_size=image_size)


def dataset_for(card: ModelCard, *, dataset: str | None = None, data_dir: str | os.PathLike | None = None
                ) -> ImageDataset:
    """The dataset a model was trained on (from its model.json or ONNX metadata), checked against it.

    `dataset` overrides the recorded one; image folders are resized to the model's input size.
    """
    name = dataset or (card.dataset if card.dataset in NAMED else card.dataset_path or card.dataset)
    ds = load_dataset(name, data_dir=data_dir, image_size=(card.height, card.width))
    check_matches(ds, card)
    return ds


def check_matches(ds: ImageDataset, card: ModelCard) -> None:
    """The model (model.json or ONNX metadata) was made for these classes and this image shape."""
    classes = list(card.classes)
    if list(ds.classes) != classes or ds.test_x.shape[1:] != card.shape:
        raise DatasetError(f"{ds.path} does not match the model: classes {ds.classes} and images "
                           f"{'x'.join(map(str, ds.test_x.shape[1:]))}, expected {classes} and "
                           f"{'x'.join(map(str, card.shape))}")
