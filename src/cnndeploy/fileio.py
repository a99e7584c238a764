"""Atomic writes: a final path holds either the old complete file or the new one."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from cnndeploy.errors import CnnDeployError

# Raised by the writer inside the block, these mean the disk refused the file, not a bug.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class WriteError(CnnDeployError):
    """An artifact could not be written (disk full, read-only, no permission); the old one is kept."""


def write_error(final: Path, e: OSError) -> WriteError:
    why = e.strerror or str(e) or type(e).__name__
    return WriteError(f"cannot write {final}: {why}; nothing was written there "
                      f"(a previous {final.name}, if any, is unchanged). Expected a writable folder "
                      "with free space")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    A full disk or a read-only folder becomes one WriteError naming `path`.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(final, e) from None
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as e:
            if e.errno in DISK_ERRNOS:
                raise write_error(final, e) from None
            raise
        try:
            with open(tmp_path, "rb+") as f:  # flush to disk before the rename makes it visible
                os.fsync(f.fileno())
            # mkstemp makes 0600, and some writers replace the file: set the usual mode last
            os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, final)
        except OSError as e:
            raise write_error(final, e) from None
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def ensure_dir(path: str | os.PathLike, *, what: str) -> Path:
    """Create folder `path` (and its parents) or raise one WriteError saying why it cannot be written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise WriteError(f"{what} {p} is a file; expected a folder (new, or one to add results to)")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"{what} {p}: cannot create the folder ({e.strerror or e}); expected a writable "
                         "location") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise WriteError(f"{what} {p}: the folder is not writable; expected a writable location")
    return p


def read_json(path: str | os.PathLike, *, what: str) -> Any:
    """Read a JSON file, raising one clear error when it is missing or malformed."""
    from cnndeploy.errors import CheckpointError

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} not found: {p} (expected a JSON file there)")
    try:
        text = p.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{what} cannot be read: {p} ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{what} is not valid JSON: {p} ({e})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (model files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
