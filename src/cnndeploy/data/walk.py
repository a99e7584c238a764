"""Walking and reading an untrusted folder: regular files only, every read bounded, no loops.

A dataset folder may hold symlinks to `/dev/zero`, FIFOs named `x.png`, dangling links and
links back to a parent folder. Nothing here ever opens a special file, reads more than the cap
plus one byte, or visits a folder twice; what cannot be read is reported, not raised.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Iterator, NamedTuple

from cnndeploy.errors import DatasetError

CHUNK = 1 << 20


class Entry(NamedTuple):
    name: str                       # posix path relative to the walk's root
    path: Path
    is_dir: bool
    st: os.stat_result | None       # None when it could not be stat'ed (then `skip` says why)
    skip: str | None                # why the entry cannot be used (a broken link, a FIFO, ...)


def skip_reason(st: os.stat_result) -> str | None:
    """None for a regular file or folder; else what it is, for the skipped-files warning."""
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return None
    return "not a regular file (a device, FIFO or socket)"


def walk(top: Path, prefix: str, max_entries: int, seen: set[tuple[int, int]] | None = None
         ) -> Iterator[Entry]:
    """Every entry under `top` (links followed), named `prefix/...`; folders are visited once.

    `seen` holds the (device, inode) of folders already walked, so a link back to a parent (a
    loop) or to a folder walked elsewhere is skipped. More than `max_entries` is refused.
    """
    seen = set() if seen is None else seen
    st = os.stat(top)
    seen.add((st.st_dev, st.st_ino))
    stack, count = [(top, prefix)], 0
    while stack:
        folder, rel = stack.pop()
        try:
            it = os.scandir(folder)
        except OSError as e:
            if folder == top:
                raise
            yield Entry(rel, folder, True, None, f"cannot be listed ({e.strerror or e})")
            continue
        with it:
            for d in it:
                count += 1
                if count > max_entries:
                    raise DatasetError(f"{top}: holds more than {max_entries:,} entries; refusing to "
                                       "walk further (expected train/<class>/* and test/<class>/* "
                                       "image files; raise the limit with CNNDEPLOY_MAX_DATASET_FILES)")
                name, path = f"{rel}/{d.name}", Path(d.path)
                try:
                    st = d.stat()           # follows links: a dangling one or a loop raises
                except OSError as e:
                    broken = e.errno in (errno.ENOENT, errno.ELOOP)
                    yield Entry(name, path, False, None, "a broken link or a link loop" if broken
                                else f"unreadable ({e.strerror or e})")
                    continue
                if stat.S_ISDIR(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        yield Entry(name, path, True, st, "a link to a folder already walked (a loop)")
                        continue
                    seen.add(key)
                    yield Entry(name, path, True, st, None)
                    stack.append((path, name))
                else:
                    yield Entry(name, path, False, st, skip_reason(st))


class Unusable(OSError):
    """A file that is not regular or exceeds the cap; `reason` goes into the skipped-files warning."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_bounded(f, cap: int) -> bytes:
    """At most `cap` bytes of a file object, in chunks; Unusable if it holds more."""
    parts, total = [], 0
    while total <= cap:
        chunk = f.read(min(CHUNK, cap + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    if total > cap:
        raise Unusable(f"larger than {cap >> 20} MB")
    return b"".join(parts)


def read_regular(path: Path, cap: int) -> bytes:
    """The bytes of a regular file of at most `cap` bytes; Unusable for anything else.

    O_NONBLOCK makes opening a FIFO return at once (a FIFO swapped in after the walk's stat),
    and fstat on the open descriptor decides, so a device or FIFO is never read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        why = skip_reason(os.fstat(fd))
        if why or stat.S_ISDIR(os.fstat(fd).st_mode):
            raise Unusable(why or "a folder")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return read_bounded(f, cap)
    finally:
        os.close(fd)


def _env_limit(var: str, default: int, unit: str) -> int:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise DatasetError(f"${var}={raw!r}: expected a positive whole number of {unit}")
    return value


def max_dataset_bytes() -> int:
    """$CNNDEPLOY_MAX_DATASET_MB (default 1024): bounds the image bytes read and the pixels decoded."""
    return _env_limit("CNNDEPLOY_MAX_DATASET_MB", 1024, "megabytes") << 20


def max_dataset_files() -> int:
    """$CNNDEPLOY_MAX_DATASET_FILES (default 1,000,000): bounds the entries of a folder or archive."""
    return _env_limit("CNNDEPLOY_MAX_DATASET_FILES", 1_000_000, "entries")
