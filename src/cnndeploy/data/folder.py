"""Image-folder datasets laid out `train/<class>/*` and `test/<class>/*`.

They may be a folder, a `.tar`/`.tar.gz`/`.tgz` or a `.zip`. Archives are read in memory and
never extracted, and member names that try to leave the archive (`../`, absolute paths) make
the whole archive refused: such a file was not made by an honest tool.
"""

from __future__ import annotations

import logging
import os
import tarfile
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from functools import partial
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from cnndeploy.data.types import ImageDataset, channel_stats
from cnndeploy.errors import DatasetError
from cnndeploy.images import DECODE_ERRORS, open_image

log = logging.getLogger("cnndeploy")

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
SPLITS = ("train", "test")
FALLBACK_SIZE = 32   # used when images differ in size and no size is asked for
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
MAX_FILE_BYTES = 50 << 20        # an image file larger than this is skipped unread


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith((".tar", ".tar.gz", ".tgz", ".zip"))


def _entries(source: Path) -> Iterator[tuple[str, int | None, Callable[[], bytes] | None]]:
    """(posix name, size, reader) per member; size and reader are None for a directory.

    Readers are called only for members that pass the name and size checks, so a huge file
    that is not an image (or is too large to be one) is never read into memory.
    """
    if source.is_dir():
        for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
            rel = Path(dirpath).relative_to(source).as_posix()
            for d in dirnames:
                yield f"{rel}/{d}", None, None
            for f in filenames:
                p = Path(dirpath) / f
                yield f"{rel}/{f}", p.stat().st_size, p.read_bytes
    elif source.name.lower().endswith(".zip"):
        with zipfile.ZipFile(source) as z:
            for info in z.infolist():
                dir_ = info.is_dir()
                yield info.filename, None if dir_ else info.file_size, None if dir_ else partial(z.read, info)
    else:
        with tarfile.open(source, "r:*") as tar:
            for m in tar:
                if m.isdir():
                    yield m.name, None, None
                elif m.isfile():
                    yield m.name, m.size, partial(lambda member: tar.extractfile(member).read(), m)


def _split_and_class(name: str, source: Path) -> tuple[str, str, str] | None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        raise DatasetError(f"{source}: member {name!r} points outside the archive; refusing it "
                           "(expected relative paths like train/<class>/<file>)")
    parts = [s for s in p.parts if s not in ("", ".")]
    for i, part in enumerate(parts[:-1]):
        if part in SPLITS:
            rest = parts[i + 1:]
            if rest[0].startswith((".", "__")):
                return None
            return part, rest[0], "/".join(rest[1:])
    return None


def _collect(source: Path) -> tuple[dict[str, set[str]], dict[str, list[tuple[str, bytes]]], Counter]:
    classes: dict[str, set[str]] = {s: set() for s in SPLITS}
    files: dict[str, list[tuple[str, str, bytes]]] = {s: [] for s in SPLITS}  # (class, name, bytes)
    skipped: Counter = Counter()
    try:
        for name, size, read in _entries(source):
            found = _split_and_class(name, source)
            if found is None:
                continue
            split, cls, rest = found
            classes[split].add(cls)
            if read is None or not rest or PurePosixPath(rest).name.startswith("."):
                continue
            if PurePosixPath(rest).suffix.lower() not in IMAGE_EXTS:
                skipped["not an image file"] += 1
            elif size > MAX_FILE_BYTES:
                skipped[f"larger than {MAX_FILE_BYTES >> 20} MB"] += 1
            else:
                files[split].append((cls, rest, read()))
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"{source}: cannot read ({first})") from None
    # Sorted by name, so a folder, a tarball and a zip of the same files give the same arrays.
    ordered = {s: [(c, d) for c, _, d in sorted(f, key=lambda t: t[:2])] for s, f in files.items()}
    return classes, ordered, skipped


def _decode(data: bytes, mode: str, size: tuple[int, int]) -> np.ndarray | None:
    try:
        with open_image(data) as im:
            if im.mode.startswith("I;16"):  # 16-bit grey: scale, don't clip, to 8 bits
                im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8))
            im = im.convert(mode)
            if im.size != size:
                im = im.resize(size, Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except DECODE_ERRORS:
        return None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _probe(files: list[tuple[str, bytes]], image_size: int | tuple[int, int] | None
           ) -> tuple[str, tuple[int, int]]:
    """Pick the colour mode and (width, height): grey only if every image is; one common size if any."""
    modes, sizes = set(), set()
    for _, data in files:
        try:
            with open_image(data) as im:
                modes.add(im.mode)
                sizes.add(im.size)
        except DECODE_ERRORS:
            continue
    mode = "L" if modes and modes <= GRAY_MODES else "RGB"
    if image_size:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        return mode, (w, h)
    return mode, sizes.pop() if len(sizes) == 1 else (FALLBACK_SIZE, FALLBACK_SIZE)


def load_image_folder(source: Path, *, name: str | None = None,
                      image_size: int | tuple[int, int] | None = None,
                      kind: str = "image-folder") -> ImageDataset:
    classes, files, skipped = _collect(source)
    for split in SPLITS:
        if not classes[split]:
            raise DatasetError(f"{source}: no '{split}/<class>/' folders found "
                               "(expected train/<class>/* and test/<class>/*)")
    names = sorted(classes["train"])
    extra = classes["test"] - classes["train"]
    if extra:
        raise DatasetError(f"{source}: test has classes that train lacks: {sorted(extra)}")
    mode, size = _probe(files["train"], image_size)
    index = {c: i for i, c in enumerate(names)}
    arrays: dict[str, np.ndarray] = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for split in SPLITS:
            decoded = list(pool.map(lambda f: _decode(f[1], mode, size), files[split]))
            keep = [(cls, a) for (cls, _), a in zip(files[split], decoded) if a is not None]
            skipped["corrupt or unreadable image"] += len(decoded) - len(keep)
            counts = Counter(cls for cls, _ in keep)
            empty = [c for c in (names if split == "train" else sorted(classes[split])) if not counts[c]]
            if empty:
                raise DatasetError(f"{source}: {split} class(es) {empty} hold no readable image")
            arrays[f"{split}_x"] = np.stack([a for _, a in keep])
            arrays[f"{split}_y"] = np.array([index[c] for c, _ in keep], dtype=np.int64)
    for why, n in skipped.items():
        if n:
            log.warning("%s: skipped %d file(s): %s", source, n, why)
    mean, std = channel_stats(arrays["train_x"])
    return ImageDataset(name=name or _stem(source), source=kind, path=str(source), classes=names,
                        mean=mean, std=std, **arrays)


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name
