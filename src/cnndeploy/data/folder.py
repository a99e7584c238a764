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
from contextlib import contextmanager
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, NamedTuple

import numpy as np
from PIL import Image

from cnndeploy.data.types import ImageDataset, channel_stats
from cnndeploy.data.walk import (Unusable, max_dataset_bytes, max_dataset_files, read_bounded,
                                 read_regular, walk)
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


NOT_A_DATASET = "is not a dataset: expected train/<class>/* and test/<class>/*"


def split_dirs(source: Path) -> list[tuple[str, Path]]:
    """The split folders of an image-folder dataset: at its top, or one wrapper folder below it.

    Only these are walked, so a folder that is not a dataset (`/`, a home folder) is refused at
    once instead of being walked; at most the top's first few thousand entries are looked at.
    """
    def splits(d: Path, prefix: str) -> list[tuple[str, Path]]:
        return [(f"{prefix}{s}", d / s) for s in SPLITS if (d / s).is_dir()]
    try:
        found = splits(source, "")
        if not found:
            with os.scandir(source) as it:
                for i, d in enumerate(it):
                    if i >= 4096:
                        break
                    if not d.name.startswith((".", "__")) and d.is_dir():
                        found += splits(Path(d.path), f"{d.name}/")
    except OSError as e:
        raise DatasetError(f"{source}: cannot read ({e.strerror or e})") from None
    if not found:
        raise DatasetError(f"{source} {NOT_A_DATASET}")
    return found


class _Member(NamedTuple):
    name: str                                   # posix name inside the dataset
    size: int | None                            # declared size; None for a folder
    read: Callable[[], bytes] | None            # bounded reader; None for a folder
    skip: str | None = None                     # why it cannot be used, for the warning


@contextmanager
def _members(source: Path, max_files: int, max_bytes: int) -> Iterator[list[_Member]]:
    """The dataset's members, listed without reading any file; readers are valid inside the `with`.

    A tarball is inflated to be listed, so all its members together must fit `max_bytes`.
    """
    if source.is_dir():
        seen: set[tuple[int, int]] = set()
        listed = []
        for prefix, top in split_dirs(source):
            for e in walk(top, prefix, max_files, seen):
                size = None if e.is_dir or e.st is None else e.st.st_size
                read = None if e.is_dir or e.skip else partial(read_regular, e.path, MAX_FILE_BYTES)
                listed.append(_Member(e.name, size, read, e.skip))
                if len(listed) > max_files:   # walk bounds each split; this bounds them together
                    raise DatasetError(f"{source}: holds more than {max_files:,} entries (raise "
                                       "CNNDEPLOY_MAX_DATASET_FILES to load it)")
        yield listed
    elif source.name.lower().endswith(".zip"):
        with zipfile.ZipFile(source) as z:
            infos = z.infolist()
            if len(infos) > max_files:
                raise DatasetError(f"{source}: holds more than {max_files:,} members (raise "
                                   "CNNDEPLOY_MAX_DATASET_FILES to load it)")
            yield [_Member(i.filename, None, None) if i.is_dir() else
                   _Member(i.filename, i.file_size, partial(_read_zip, z, i)) for i in infos]
    else:
        with tarfile.open(source, "r:*") as tar:
            listed, total = [], 0
            for m in tar:
                total += m.size
                if len(listed) >= max_files:
                    raise DatasetError(f"{source}: holds more than {max_files:,} members (raise "
                                       "CNNDEPLOY_MAX_DATASET_FILES to load it)")
                if total > max_bytes:   # listing a tarball inflates all of it, images or not
                    raise DatasetError(f"{source}: its members add up to more than {max_bytes >> 20} MB "
                                       "once inflated; raise CNNDEPLOY_MAX_DATASET_MB to load it")
                if m.isdir():
                    listed.append(_Member(m.name, None, None))
                elif m.isfile():
                    listed.append(_Member(m.name, m.size, partial(_read_tar, tar, m)))
            yield listed


def _read_zip(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    with z.open(info) as f:
        return read_bounded(f, min(info.file_size, MAX_FILE_BYTES))


def _read_tar(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(m)
    return b"" if f is None else read_bounded(f, min(m.size, MAX_FILE_BYTES))


def _split_and_class(name: str, source: Path) -> tuple[str, str, str] | None:
    """(split, class, rest) of a member named split/class/rest, or wrapper/split/class/rest."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        raise DatasetError(f"{source}: member {name!r} points outside the archive; refusing it "
                           "(expected relative paths like train/<class>/<file>)")
    parts = [s for s in p.parts if s not in ("", ".")]
    for i, part in enumerate(parts[:min(2, len(parts) - 1)]):
        if part in SPLITS:
            rest = parts[i + 1:]
            if rest[0].startswith((".", "__")):
                return None
            return part, rest[0], "/".join(rest[1:])
    return None


def _collect(source: Path, max_bytes: int) -> tuple[dict[str, set[str]], dict[str, list[tuple[str, bytes]]], Counter]:
    classes: dict[str, set[str]] = {s: set() for s in SPLITS}
    wanted: dict[str, list[tuple[str, str, _Member]]] = {s: [] for s in SPLITS}  # (class, name, member)
    files: dict[str, list[tuple[str, str, bytes]]] = {s: [] for s in SPLITS}
    skipped: Counter = Counter()
    max_files = max_dataset_files()
    try:
        with _members(source, max_files, max_bytes) as members:
            total = 0
            for m in members:
                found = _split_and_class(m.name, source)
                if found is None:
                    continue
                split, cls, rest = found
                if m.skip:
                    skipped[m.skip] += 1
                    continue
                classes[split].add(cls)
                if m.read is None or not rest or PurePosixPath(rest).name.startswith("."):
                    continue
                if PurePosixPath(rest).suffix.lower() not in IMAGE_EXTS:
                    skipped["not an image file"] += 1
                elif m.size > MAX_FILE_BYTES:
                    skipped[f"larger than {MAX_FILE_BYTES >> 20} MB"] += 1
                else:
                    total += m.size
                    wanted[split].append((cls, rest, m))
            if total > max_bytes:   # checked on the declared sizes, before reading any
                raise DatasetError(f"{source}: its image files add up to {total >> 20} MB, more than the "
                                   f"{max_bytes >> 20} MB allowed; raise CNNDEPLOY_MAX_DATASET_MB to load it")
            for split, ws in wanted.items():   # in listing order: a tarball is read front to back
                for cls, rest, m in ws:
                    try:
                        files[split].append((cls, rest, m.read()))
                    except Unusable as e:
                        skipped[e.reason] += 1
                    except OSError as e:
                        if not source.is_dir():
                            raise
                        skipped[f"unreadable ({e.strerror or e})"] += 1
    # NotImplementedError: zipfile's answer to a member packed with a compression method it lacks;
    # RuntimeError: an encrypted zip member
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"{source}: cannot read ({first})") from None
    # Sorted by name, so a folder, a tarball and a zip of the same files give the same arrays.
    ordered = {s: [(c, d) for c, _, d in sorted(f, key=lambda t: t[:2])] for s, f in files.items()}
    return classes, ordered, skipped


def _header(data: bytes) -> tuple[str, tuple[int, int]] | None:
    """(mode, (width, height)) from the header alone (Pillow opens lazily), or None if unreadable."""
    try:
        with open_image(data) as im:
            return im.mode, im.size
    except DECODE_ERRORS:
        return None


def _decode_into(out: np.ndarray, data: bytes, mode: str, size: tuple[int, int]) -> bool:
    try:
        with open_image(data) as im:
            if im.mode.startswith("I;16"):  # 16-bit grey: scale, don't clip, to 8 bits
                im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8))
            im = im.convert(mode)
            if im.size != size:
                im = im.resize(size, Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except DECODE_ERRORS:
        return False
    out[...] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return True


def _choose(headers: list[tuple[str, tuple[int, int]] | None], image_size: int | tuple[int, int] | None
            ) -> tuple[str, tuple[int, int]]:
    """Pick the colour mode and (width, height): grey only if every image is; one common size if any."""
    modes = {h[0] for h in headers if h}
    sizes = {h[1] for h in headers if h}
    mode = "L" if modes and modes <= GRAY_MODES else "RGB"
    if image_size:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        return mode, (w, h)
    return mode, sizes.pop() if len(sizes) == 1 else (FALLBACK_SIZE, FALLBACK_SIZE)


def _source_bytes(header: tuple[str, tuple[int, int]], channels: int) -> int:
    """What decoding one image costs: its pixels at the larger of its own and the target depth."""
    mode, (w, h) = header
    depth = 4 if mode in ("I", "F") else 2 if mode.startswith("I;16") else Image.getmodebands(mode)
    return w * h * max(depth, channels)


def _check_decoded(source: Path, headers: dict[str, list], channels: int, size: tuple[int, int],
                   max_bytes: int) -> None:
    """Refuse, before decoding anything, a dataset whose pixels or arrays exceed the limit."""
    every = [h for hs in headers.values() for h in hs if h]
    decoded = sum(_source_bytes(h, channels) for h in every)
    stored = len(every) * channels * size[0] * size[1]
    worst, what = (decoded, "decode to") if decoded >= stored else (stored, "make arrays of")
    if worst > max_bytes:
        raise DatasetError(f"{source}: its {len(every):,} images {what} {worst >> 20} MB, more than the "
                           f"{max_bytes >> 20} MB allowed; raise CNNDEPLOY_MAX_DATASET_MB to load it"
                           + ("" if what == "decode to" else " (or ask for a smaller image size)"))


def load_image_folder(source: Path, *, name: str | None = None,
                      image_size: int | tuple[int, int] | None = None,
                      kind: str = "image-folder") -> ImageDataset:
    max_bytes = max_dataset_bytes()
    classes, files, skipped = _collect(source, max_bytes)
    for split in SPLITS:
        if not classes[split]:
            raise DatasetError(f"{source}: no '{split}/<class>/' folders found "
                               "(expected train/<class>/* and test/<class>/*)")
    names = sorted(classes["train"])
    extra = classes["test"] - classes["train"]
    if extra:
        raise DatasetError(f"{source}: test has classes that train lacks: {sorted(extra)}")
    headers = {split: [_header(d) for _, d in files[split]] for split in SPLITS}
    mode, size = _choose(headers["train"], image_size)
    channels = 1 if mode == "L" else 3
    _check_decoded(source, headers, channels, size, max_bytes)
    index = {c: i for i, c in enumerate(names)}
    arrays: dict[str, np.ndarray] = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for split in SPLITS:
            todo = [(cls, d) for (cls, d), h in zip(files[split], headers[split]) if h]
            out = np.empty((len(todo), channels, size[1], size[0]), np.uint8)  # sized and checked first
            ok = np.array(list(pool.map(lambda i: _decode_into(out[i], todo[i][1], mode, size),
                                        range(len(todo)))), dtype=bool)
            keep = [cls for (cls, _), good in zip(todo, ok) if good]
            skipped["corrupt or unreadable image"] += len(files[split]) - len(keep)
            counts = Counter(keep)
            empty = [c for c in (names if split == "train" else sorted(classes[split])) if not counts[c]]
            if empty:
                raise DatasetError(f"{source}: {split} class(es) {empty} hold no readable image")
            arrays[f"{split}_x"] = out if ok.all() else out[ok]
            arrays[f"{split}_y"] = np.array([index[c] for c in keep], dtype=np.int64)
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
