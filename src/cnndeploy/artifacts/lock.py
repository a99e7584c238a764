"""One writer per folder: every command that writes a run directory (or a bench, pipeline or Triton
folder) holds an exclusive `flock` on FOLDER/.cnndeploy.lock while it writes.

Two `cnndeploy train` runs into one --out would otherwise both pass the "already holds a run" check and
the later would overwrite the other's finished run. The lock is advisory, non-blocking (a second writer
is refused at once, naming the holder's PID and command) and released by the kernel when the holder
exits or is killed, so a crash never leaves a folder locked. It is re-entrant within one process: the
pipeline holds its folders for the whole run while its stages (train, export, quant, bench) take the
same locks again (a second `flock` on a re-opened file would conflict even in the same process).
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cnndeploy.artifacts.files import LOCK
from cnndeploy.errors import CnnDeployError
from cnndeploy.fileio import WriteError, ensure_dir


class FolderBusy(CnnDeployError):
    """Another process is writing the folder."""


@dataclass
class _Held:
    fd: int
    count: int
    created: bool   # this process made the folder: removed again on release if nothing was written there
    thread: int     # re-entrant for this thread only: two threads writing one folder clash like processes


_held: dict[str, _Held] = {}   # real path of a folder -> its lock, while this process holds it
_guard = threading.Lock()
_ATTEMPTS = 5   # a releasing holder unlinks the lock file; whoever locked that old file tries again


def _holder(fd: int) -> str:
    """'PID 1234, `cnndeploy train`' as the holder wrote it, or what is known."""
    try:
        text = os.pread(fd, 300, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "PID unknown"
    return f"PID {pid}, `{command}`" if command else f"PID {pid}"


def _busy(folder: Path, holder: str, what: str) -> FolderBusy:
    alternative = f" or choose another {what}" if what.startswith("--") else ""
    return FolderBusy(f"{folder} is being written by another cnndeploy process ({holder}); "
                      f"wait for it to finish{alternative}")


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        return False


def _open_lock(folder: Path, what: str) -> int:
    try:
        return os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise WriteError(f"{what} {folder}: cannot create its lock file {LOCK} ({e.strerror or e}); "
                         "expected a writable folder") from None


def _acquire(folder: Path, command: str, what: str) -> _Held:
    created = not folder.exists()
    for _ in range(_ATTEMPTS):
        ensure_dir(folder, what=what)   # again: a releasing holder may have removed the empty folder
        fd = _open_lock(folder, what)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise _busy(folder, holder, what) from None
        if _same_file(fd, folder / LOCK):
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
            except OSError:
                pass   # a full disk: the lock holds all the same, others are told "PID unknown"
            return _Held(fd, 1, created, threading.get_ident())
        os.close(fd)   # locked a file its holder had unlinked on release: lock the current one
    raise _busy(folder, "its lock file keeps being replaced", what)


def _release(folder: Path, held: _Held) -> None:
    # unlinked while still locked, so no one can lock this file and then think they hold the folder
    if _same_file(held.fd, folder / LOCK):
        (folder / LOCK).unlink(missing_ok=True)
    os.close(held.fd)
    if held.created:
        try:
            folder.rmdir()   # only if empty: a command that failed before writing leaves no folder
        except OSError:
            pass


@contextmanager
def writing(folder: str | os.PathLike, *, command: str, what: str = "--out") -> Iterator[Path]:
    """Hold the write lock of `folder` (created if missing) for the block; FolderBusy if another process
    holds it. `command` names this writer in the refusal others get; `what` names the folder there."""
    path = Path(folder)
    key = os.path.realpath(path)
    with _guard:
        held = _held.get(key)
        if held and held.thread != threading.get_ident():
            raise _busy(path, f"PID {os.getpid()} (this process), another thread", what)
        if held:
            held.count += 1
        else:
            held = _held[key] = _acquire(path, command, what)
    try:
        yield path
    finally:
        with _guard:
            held.count -= 1
            if held.count == 0:
                del _held[key]
                _release(path, held)

