"""Concurrent writers: one command writes a folder at a time (artifacts/lock.py), a second is refused with
one line naming the holder, and a killed holder leaves nothing locked."""

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cnndeploy.artifacts import lock
from cnndeploy.artifacts.files import LOCK
from cnndeploy.cli import main
from cnndeploy.fileio import WriteError

SRC = Path(__file__).resolve().parents[1] / "src"
# A second process that takes the write locks of its arguments, says so, and holds them until stdin closes.
HOLDER = """
import sys
from contextlib import ExitStack
from cnndeploy.artifacts import lock
with ExitStack() as held:
    for folder in sys.argv[1:]:
        held.enter_context(lock.writing(folder, command="cnndeploy train"))
    print("held", flush=True)
    sys.stdin.readline()
"""


def _holder(*folders: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, folders)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(mini_mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("locks") / "lenet5-mnist"
    assert main(["train", "--model", "lenet5", "--dataset", "mnist", "--data-dir", str(mini_mnist), "--epochs", "1",
                 "--subset", "128", "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    assert not (out / LOCK).exists()   # released, and unlinked, when the command ends
    return out


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / trained.name
    shutil.copytree(trained, copy)
    return copy


def test_a_second_writer_is_refused_naming_the_holder(run, mini_mnist, tmp_path, capsys):
    bench, pruned, pipe = tmp_path / "bench", tmp_path / "pruned", tmp_path / "pipe"
    before = _snapshot(run)
    holder = _holder(run, bench, pruned, pipe)
    try:
        data = ["--data-dir", str(mini_mnist)]
        for argv in (["train", "--model", "lenet5", "--dataset", "mnist", "--out", str(run), "--epochs", "1",
                      "--seed", "7", *data],
                     ["export", str(run), "--onnx", *data],
                     ["quant", str(run), *data],
                     ["prune", str(run), "--amount", "0.5", "--out", str(pruned), "--no-progress", *data],
                     ["bench", str(run), "--backends", "torch", "--out", str(bench), "--no-progress", *data],
                     ["pipeline", "--dataset", "mnist", "--models", "lenet5", "--out", str(pipe), "--no-progress",
                      *data]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
            assert f"is being written by another cnndeploy process (PID {holder.pid}, `cnndeploy train`)" in err
            assert "wait for it to finish" in err
        assert _snapshot(run) == {**before, LOCK: f"{holder.pid} cnndeploy train\n".encode()}  # untouched
        assert [p.name for p in pipe.iterdir()] == [LOCK] and [p.name for p in bench.iterdir()] == [LOCK]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not run.joinpath(LOCK).exists() and not pipe.exists()   # the holder removed what it made
    # the lock gone, a finished run is still never overwritten
    assert main(["train", "--model", "lenet5", "--dataset", "mnist", "--out", str(run), "--seed", "7"]) == 2
    assert "already holds a trained model" in capsys.readouterr().err
    assert _snapshot(run) == before


def test_the_lock_dies_with_a_killed_holder(tmp_path):
    folder = tmp_path / "run"
    holder = _holder(folder)
    assert (folder / LOCK).read_text() == f"{holder.pid} cnndeploy train\n"
    with pytest.raises(lock.FolderBusy, match=f"PID {holder.pid}"):
        with lock.writing(folder, command="cnndeploy export"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (folder / LOCK).exists()   # a killed holder cannot unlink it; the kernel released its flock
    with lock.writing(folder, command="cnndeploy export"):
        assert (folder / LOCK).read_text() == f"{os.getpid()} cnndeploy export\n"
    assert not (folder / LOCK).exists() and folder.is_dir()   # not made by this writer: the folder stays


def test_one_thread_reenters_while_other_threads_and_processes_are_refused(tmp_path):
    folder = tmp_path / "new"
    with lock.writing(folder, command="cnndeploy pipeline"):
        with lock.writing(folder, command="cnndeploy train"):   # a pipeline stage: no deadlock
            (folder / "x").write_text("kept")
        errors = []
        thread = threading.Thread(target=lambda: errors.append(_try(folder)))
        thread.start()
        thread.join()
        assert "this process), another thread" in errors[0]
        other = subprocess.run([sys.executable, "-c", "import sys; from cnndeploy.artifacts import lock\n"
                                "with lock.writing(sys.argv[1], command='x'): pass", str(folder)],
                               capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC)})
        assert other.returncode == 1 and f"PID {os.getpid()}, `cnndeploy pipeline`" in other.stderr
        assert (folder / LOCK).is_file()   # still held after the inner block ended
    assert sorted(p.name for p in folder.iterdir()) == ["x"]
    empty = tmp_path / "empty"
    with lock.writing(empty, command="cnndeploy bench"):
        assert empty.is_dir()
    assert not empty.exists()   # made for the lock and left empty: removed, as if never written


def _try(folder: Path) -> str:
    try:
        with lock.writing(folder, command="cnndeploy train"):
            return "acquired"
    except lock.FolderBusy as e:
        return str(e)


def test_a_folder_that_cannot_hold_a_lock_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    with pytest.raises(WriteError, match="is a file"):
        with lock.writing(blocker, command="cnndeploy bench"):
            pass
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / LOCK).mkdir()   # something else squats on the name
    with pytest.raises(WriteError, match="cannot create its lock file"):
        with lock.writing(tmp_path / "d", command="cnndeploy bench"):
            pass
    assert blocker.read_text() == "keep me"
