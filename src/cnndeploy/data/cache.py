"""Decoded arrays cached as .npy files so that a second run starts in well under 2 seconds."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from cnndeploy.data.paths import cache_dir
from cnndeploy.data.types import ImageDataset
from cnndeploy.data.walk import max_dataset_files, walk
from cnndeploy.errors import DatasetError

log = logging.getLogger("cnndeploy")
FORMAT = 1
ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def _fingerprint(path: Path, tree: list[tuple[str, Path]] | None = None) -> list:
    """Identity of a source: size and mtime of the file, or of every file under the folder.

    The folder is walked as the loaders walk it (links followed once, loops and broken links
    recorded by name, the entry count bounded), so a hostile folder cannot hang or crash this.
    `tree` names the (prefix, folder) parts to walk instead of all of `path`.
    """
    if path.is_file():
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    rows, seen = [], set()
    for prefix, top in tree or [(".", path)]:
        for e in walk(top, prefix, max_dataset_files(), seen):
            if not e.is_dir:
                rows.append([e.name, e.skip] if e.st is None else [e.name, e.st.st_size, e.st.st_mtime_ns])
    return sorted(rows, key=str)


def cache_key(kind: str, path: Path, tree: list[tuple[str, Path]] | None = None, **options) -> str:
    blob = json.dumps([FORMAT, kind, str(path.resolve()), _fingerprint(path, tree), options], sort_keys=True,
                      default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _read(folder: Path) -> ImageDataset | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {k: np.load(folder / f"{k}.npy", allow_pickle=False) for k in ARRAYS}
        return ImageDataset(**meta, **arrays)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _write(folder: Path, ds: ImageDataset) -> None:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as e:  # a read-only or misplaced cache only costs time on the next run
        log.warning("not caching the decoded dataset in %s (%s); the next run decodes it again",
                    folder.parent, e.strerror or e)
        return
    try:
        for k in ARRAYS:
            np.save(tmp / f"{k}.npy", getattr(ds, k), allow_pickle=False)
        meta = {"name": ds.name, "source": ds.source, "path": ds.path, "classes": ds.classes,
                "mean": list(ds.mean), "std": list(ds.std)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.rename(tmp, folder)  # atomic; fails harmlessly if another process got there first
    except OSError as e:  # a cache we cannot write only costs time on the next run
        if folder.is_dir():  # another process stored the same entry first
            log.debug("not caching %s: %s", folder, e)
        else:
            log.warning("not caching the decoded dataset in %s (%s); the next run decodes it again",
                        folder, e.strerror or e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached(kind: str, path: Path, load: Callable[[], ImageDataset], *, use_cache: bool = True,
           tree: list[tuple[str, Path]] | None = None, **options) -> ImageDataset:
    """Return the dataset from the cache, or load it and store it there.

    `tree`: the (prefix, folder) parts of `path` the dataset is read from, if not all of it."""
    if not use_cache:
        return load()
    try:
        key = cache_key(kind, path, tree, **options)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    folder = cache_dir() / "arrays" / f"{kind}-{key}"
    ds = _read(folder)
    if ds is None:
        shutil.rmtree(folder, ignore_errors=True)  # drop a stale or damaged entry
        ds = load()
        _write(folder, ds)
    ds.mean, ds.std = tuple(ds.mean), tuple(ds.std)
    return ds
