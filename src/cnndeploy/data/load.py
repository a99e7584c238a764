"""Find and load a dataset by name (mnist, cifar10) or path (image folder or archive)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from cnndeploy.data import cifar, folder, mnist
from cnndeploy.data.cache import cached
from cnndeploy.data.download import download as fetch
from cnndeploy.data.paths import data_roots
from cnndeploy.data.types import ImageDataset
from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.files import MODEL_JSON
from cnndeploy.errors import CnnDeployError, DatasetError

NAMED = ("mnist", "cifar10")
RECORDED = "recorded in model.json"
log = logging.getLogger(__name__)
_announced: set[tuple[str, str]] = set()


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


def _probe(name: str, why: str, root: Path) -> tuple[str, Path, Callable[[Path], ImageDataset]] | None:
    """_find in one root; a root that cannot be looked into (permission denied) is one clear line."""
    try:
        return _find(name, root) if root.exists() else None
    except OSError as e:
        raise DatasetError(f"{why}: {root}: cannot be read ({e.strerror or e}); expected a readable "
                           f"folder holding {name}") from None


def _not_found(name: str, roots: list[tuple[str, Path]]) -> DatasetError:
    looked = "; ".join(f"{why}: {p}" for why, p in roots)
    expected = ("the four MNIST IDX files (train-images-idx3-ubyte.gz, ...) in <dir>/mnist/ or "
                "<dir>/MNIST/raw/" if name == "mnist" else
                "cifar-10-batches-py/, cifar-10-python.tar.gz, cifar-10-binary.tar.gz or "
                "cifar10-jpeg.tar.gz in <dir>")
    # the source checkout ships a subset, so a new user need not download anything
    shipped = (" A source checkout ships a subset (10,000 training, 2,000 test images): --data-dir "
               "data/mnist-mini from the checkout's root." if name == "mnist" else "")
    return DatasetError(f"dataset {name!r} not found (looked in {looked}); expected {expected}. "
                        f"Pass --data-dir DIR or set CNNDEPLOY_DATA=DIR, or fetch it with "
                        f"'cnndeploy train ... --dataset {name} --download'.{shipped}")


def _load_named(name: str, roots: list[tuple[str, Path]], *, download: bool = False,
                use_cache: bool = True) -> tuple[ImageDataset, str]:
    """The first of `roots` that holds dataset `name`, loaded, and how that root was chosen."""
    hit = next(((why, h) for why, root in roots if (h := _probe(name, why, root))), None)
    if hit is None and download:
        why, root = roots[0]
        fetch(name, root)
        hit = (why, h) if (h := _probe(name, why, root)) else None
    if hit is None:
        raise _not_found(name, roots)
    why, (kind, path, loader) = hit
    path = path.resolve()
    return cached(kind, path, lambda: loader(path), use_cache=use_cache), why


def load_dataset(dataset: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                 download: bool = False, image_size: int | tuple[int, int] | None = None,
                 use_cache: bool = True) -> ImageDataset:
    """Load `mnist`, `cifar10`, or an image folder / archive at a path, as uint8 arrays.

    `image_size` (an int or (height, width)) resizes image-folder datasets; named ones ignore it.
    """
    name = str(dataset)
    if name in NAMED:
        return _load_named(name, data_roots(data_dir), download=download, use_cache=use_cache)[0]
    path = Path(name).expanduser().resolve()
    try:
        is_dir, is_archive = path.is_dir(), folder.is_archive(path)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    tree = folder.split_dirs(path) if is_dir else None   # refuses `/` before anything walks it
    if not (is_dir or is_archive):
        raise DatasetError(f"unknown dataset {name!r}: expected 'mnist', 'cifar10', or a path to a "
                           "folder or .tar.gz/.zip archive laid out train/<class>/*, test/<class>/*")
    return cached("image-folder", path, lambda: folder.load_image_folder(path, image_size=image_size),
                  use_cache=use_cache, tree=tree, image_size=image_size)


def dataset_for(card: ModelCard, *, dataset: str | None = None, data_dir: str | os.PathLike | None = None,
                run_dir: str | os.PathLike | None = None) -> ImageDataset:
    """The dataset a model was trained on (from its model.json or ONNX metadata), checked against it.

    A named dataset is looked for in --data-dir, $CNNDEPLOY_DATA, then where training read it
    (model.json's `dataset_path`), then the user cache; one line logs which was used. `dataset`
    overrides the recorded one; image folders are resized to the model's input size. `run_dir`
    supplies the recorded location for a card read from a file that lacks it (an ONNX file).
    """
    recorded = card.dataset_path or _recorded_path(run_dir, card)
    if (dataset or card.dataset) in NAMED:
        name = dataset or card.dataset
        roots = data_roots(data_dir)
        if recorded and name == card.dataset:
            roots.insert(len(roots) - 1, (RECORDED, Path(recorded)))  # the user cache stays last
        ds, why = _load_named(name, roots)
    else:
        why = "--dataset" if dataset else (RECORDED if recorded else "the model's dataset")
        try:
            ds = load_dataset(dataset or recorded or card.dataset, image_size=(card.height, card.width))
        except DatasetError as e:
            if why != RECORDED:
                raise
            # model.json is untrusted input too: say where the path came from and the way out
            raise DatasetError(f"{e} (the dataset_path recorded in model.json; pass --dataset PATH "
                               "to use another)") from None
    check_matches(ds, card)
    if (str(ds.path), why) not in _announced:  # once per process: bench and the pipeline ask per run
        _announced.add((str(ds.path), why))
        log.info("%s dataset: %s (%s)", ds.name, ds.path, why)
    return ds


def _recorded_path(run_dir: str | os.PathLike | None, card: ModelCard) -> str | None:
    """`dataset_path` of RUN_DIR's model.json, if it describes the same dataset and classes as `card`."""
    if run_dir is None or not (Path(run_dir) / MODEL_JSON).is_file():
        return None
    try:
        run_card = ModelCard.read(run_dir)
    except CnnDeployError:
        return None  # the file's own metadata is enough to go on; the other roots still apply
    same = run_card.dataset == card.dataset and run_card.classes == card.classes
    return run_card.dataset_path if same else None


def check_matches(ds: ImageDataset, card: ModelCard) -> None:
    """The model (model.json or ONNX metadata) was made for these classes and this image shape."""
    classes = list(card.classes)
    if list(ds.classes) != classes or ds.test_x.shape[1:] != card.shape:
        raise DatasetError(f"{ds.path} does not match the model: classes {ds.classes} and images "
                           f"{'x'.join(map(str, ds.test_x.shape[1:]))}, expected {classes} and "
                           f"{'x'.join(map(str, card.shape))}")
