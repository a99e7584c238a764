"""Training and artifact faults: SIGKILL, NaN gradients, a full disk. Nothing is lost.

The SIGKILL tests run `python -m cnndeploy train` in a child process. The disk-full tests use
a real, tiny tmpfs (the tests run as root); where mounting is not allowed they are skipped, and
test_safetensors_disk_error_is_a_write_error still checks the conversion by patching.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cnndeploy.artifacts import ModelCard
from cnndeploy.artifacts import files as layout
from cnndeploy.models import weights
from cnndeploy.cli import main
from cnndeploy.errors import CnnDeployError, TrainingError
from cnndeploy.fileio import WriteError, atomic_path, write_bytes_atomic
from cnndeploy.train import fit
from cnndeploy.train.checkpoint import checkpoint_state
from cnndeploy.train.fit import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
SUBSET, BATCH = 512, 64
TRAIN_ARGS = ["--model", "lenet5", "--dataset", "mnist", "--epochs", "3", "--subset", str(SUBSET),
              "--batch-size", str(BATCH), "--seed", "0", "--device", "cpu", "--no-progress"]


def _cfg(mini_mnist: Path, out: Path, **kw) -> TrainConfig:
    """The same run as TRAIN_ARGS, in-process."""
    base = dict(model="lenet5", dataset="mnist", out=str(out), data_dir=str(mini_mnist), device="cpu",
                epochs=3, subset=SUBSET, batch_size=BATCH, seed=0)
    return TrainConfig(**{**base, **kw})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_every_final_file_is_complete(run: Path) -> None:
    """Files with their final names parse completely; only dot-named temporaries may be partial."""
    for p in run.iterdir():
        if p.name == layout.LOCK:
            continue   # left by the killed writer; flock released it with the process
        if p.name.startswith("."):
            assert p.name.endswith(".tmp"), p.name
        elif p.suffix == ".safetensors":
            weights.load_tensors(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".jsonl":
            [json.loads(line) for line in p.read_text().splitlines()]
        elif p.suffix == ".png":
            assert p.read_bytes().endswith(b"IEND\xaeB`\x82"), p.name
        else:
            raise AssertionError(f"unexpected file {p.name}")


# ---------------------------------------------------------------- 12. SIGKILL

# Runs the real CLI, but the Nth checkpoint write stops half-way through its temporary file,
# reports the hash of the checkpoint currently in place, and waits to be killed.
_KILL_MID_WRITE = """
import hashlib, os, sys, time
from pathlib import Path
import safetensors.torch as st
from cnndeploy.cli import main

ready, kill_at = Path(sys.argv[1]), int(sys.argv[2])
real, calls = st.save_file, []

def save_file(tensors, filename, metadata=None):
    if os.path.basename(filename).startswith(".checkpoint.safetensors."):
        calls.append(filename)
        if len(calls) == kill_at:
            data = st.save(tensors, metadata=metadata)
            with open(filename, "wb") as f:
                f.write(data[: len(data) // 2])
            final = Path(filename).parent / "checkpoint.safetensors"
            ready.write_text(hashlib.sha256(final.read_bytes()).hexdigest() + " " + filename)
            time.sleep(120)
    return real(tensors, filename, metadata=metadata)

st.save_file = save_file
sys.exit(main(sys.argv[3:]))
"""


def _cnndeploy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnndeploy", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def straight(mini_mnist, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Weights of the uninterrupted run that every interrupted one must reproduce. A child
    process too: in-process, other tests may have changed torch's thread count, and with it
    the order of float sums."""
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = _cnndeploy("train", *TRAIN_ARGS, "--data-dir", str(mini_mnist), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return weights.load_tensors(out / layout.WEIGHTS)[0]


def _same_weights(run: Path, reference: dict[str, torch.Tensor]) -> bool:
    got = weights.load_tensors(run / layout.WEIGHTS)[0]
    return got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in got)


def test_sigkill_while_writing_a_checkpoint(mini_mnist, tmp_path, straight):
    run, ready = tmp_path / "run", tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", _KILL_MID_WRITE, str(ready), "2", "train", *TRAIN_ARGS,
                              "--data-dir", str(mini_mnist), "--out", str(run)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)   # let the hook finish writing its report
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert ready.exists(), child.stderr.read().decode()
    sha_before, partial = ready.read_text().split(" ", 1)
    # Killed half-way through epoch 2's checkpoint: a partial temporary file, the old checkpoint intact.
    assert Path(partial).is_file() and Path(partial).name.startswith(".checkpoint.safetensors.")
    assert _sha(run / layout.CHECKPOINT) == sha_before
    assert checkpoint_state(run / layout.CHECKPOINT)["epoch"] == 1
    _assert_every_final_file_is_complete(run)
    assert not (run / layout.METRICS).exists() and not (run / layout.WEIGHTS).exists()
    proc = _cnndeploy("train", *TRAIN_ARGS, "--data-dir", str(mini_mnist), "--out", str(run), "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stderr and "after epoch 1 of 3" in proc.stderr
    assert [json.loads(x)["epoch"] for x in (run / layout.LOG).read_text().splitlines()] == [1, 2, 3]
    assert _same_weights(run, straight)   # 13: killed + resumed == uninterrupted


def test_sigkill_at_random_moments_then_resume(mini_mnist, tmp_path, straight):
    """Two kills at seeded random moments of the training (measured from when the first child
    created its run directory), each followed by --resume, or by a fresh start when no checkpoint
    exists yet; after every kill all final-named files are complete."""
    run, rng = tmp_path / "run", random.Random(6)
    kills, startup = 0, None
    for attempt in range(6):
        if (run / layout.METRICS).exists():   # killed while exiting, after the run was complete
            break
        resume = ["--resume"] if (run / layout.CHECKPOINT).exists() else []
        t0 = time.monotonic()
        child = subprocess.Popen([sys.executable, "-m", "cnndeploy", "train", *TRAIN_ARGS, "--data-dir",
                                  str(mini_mnist), "--out", str(run), *resume], cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if startup is None:   # the first child: time until training starts (its run directory appears)
            while not run.exists() and child.poll() is None:
                time.sleep(0.02)
            startup = time.monotonic() - t0
        if kills < 2:
            try:
                child.wait(timeout=max(0.0, startup + rng.uniform(0.0, 1.0) - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
                kills += 1
        _, err = child.communicate(timeout=300)
        if run.exists():
            _assert_every_final_file_is_complete(run)
        if child.returncode == 0:
            break
        assert child.returncode == -signal.SIGKILL, err.decode()
    assert kills >= 1
    assert json.loads((run / layout.METRICS).read_text())["epochs"] == 3
    assert _same_weights(run, straight)


# ---------------------------------------------------------------- 14. NaN in the gradients

def test_nan_gradient_in_the_last_step_keeps_the_last_good_checkpoint(mini_mnist, tmp_path, monkeypatch):
    """Bug found here: a NaN gradient in an epoch's last step left that step's loss finite, so the
    NaN weights were saved over the good checkpoint. Now the weights are checked before saving."""
    steps_per_epoch = SUBSET // BATCH
    real = fit.train_one_epoch

    def poison_last_step_of_epoch_2(model, *args, **kwargs):
        if kwargs["epoch"] == 2:
            param, calls = next(model.parameters()), {"n": 0}

            def hook(grad):
                calls["n"] += 1
                return grad * float("nan") if calls["n"] == steps_per_epoch else grad
            handle = param.register_hook(hook)
            try:
                return real(model, *args, **kwargs)
            finally:
                handle.remove()
        return real(model, *args, **kwargs)
    monkeypatch.setattr(fit, "train_one_epoch", poison_last_step_of_epoch_2)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"weights became NaN or infinite during epoch 2 "
                                            r"\(features\.0\.weight.*last good checkpoint was kept"):
        train(_cfg(mini_mnist, out), progress=False)
    assert checkpoint_state(out / layout.CHECKPOINT)["epoch"] == 1
    with safe_open(str(out / layout.CHECKPOINT), "pt") as f:
        assert all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys() if k.startswith("model."))
    assert not (out / layout.METRICS).exists() and not (out / layout.WEIGHTS).exists()


# ---------------------------------------------------------------- 15. disk full

@contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); "
                    "test_safetensors_disk_error_is_a_write_error covers the conversion")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(disk: Path, leave: int = 16 << 10) -> None:
    """Take all but `leave` bytes of the tmpfs with a ballast file."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "ballast", "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, free - leave))


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_disk_full_while_writing_a_checkpoint(mini_mnist, tmp_path, monkeypatch, capsys):
    with _tmpfs(tmp_path / "disk", "4m") as disk:
        real, saved = fit.save_checkpoint, {}

        def save_then_fill(path, **kwargs):
            real(path, **kwargs)
            if not saved:
                saved["sha"] = _sha(Path(path))
                _fill(disk)
        monkeypatch.setattr(fit, "save_checkpoint", save_then_fill)
        run = disk / "run"
        code = main(["train", *TRAIN_ARGS, "--data-dir", str(mini_mnist), "--out", str(run)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert f"error: cannot write {run / layout.CHECKPOINT}: No space left on device" in err
        assert _sha(run / layout.CHECKPOINT) == saved["sha"]
        assert checkpoint_state(run / layout.CHECKPOINT)["epoch"] == 1
        assert _no_temporaries(run) and not (run / layout.METRICS).exists()


@pytest.fixture(scope="module")
def exported_run(mini_mnist, tmp_path_factory) -> Path:
    """An untrained LeNet-5 run with model.onnx and model.int8-cpu.onnx, made once."""
    from test_reliability import tiny_run

    from cnndeploy.export import export_onnx
    from cnndeploy.quant.calibration import calibration_images
    from cnndeploy.quant.ptq import quantize_file

    run = tiny_run(tmp_path_factory.mktemp("exported"))
    export_onnx(run, data_dir=str(mini_mnist))
    meta = ModelCard.read(run)
    quantize_file(run / "model.onnx", run / "model.int8-cpu.onnx",
                  calibration_images(meta, size=32, seed=0, data_dir=str(mini_mnist)), target="cpu",
                  method="minmax")
    return run


@pytest.mark.parametrize("command,artifact", [
    (["export", "{run}", "--onnx"], "model.onnx"),
    (["quant", "{run}", "--calib-size", "32"], "model.int8-cpu.onnx"),
])
def test_disk_full_while_writing_onnx_files(exported_run, mini_mnist, tmp_path, capsys, command, artifact):
    with _tmpfs(tmp_path / "disk", "2m") as disk:
        run = disk / "run"
        shutil.copytree(exported_run, run)
        before = {p.name: _sha(p) for p in run.iterdir()}
        _fill(disk)
        code = main([c.format(run=run) for c in command] + ["--data-dir", str(mini_mnist)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert f"cannot write {run / artifact}: No space left on device" in err
        assert {p.name: _sha(p) for p in run.iterdir()} == before      # the old file (and all others) intact
        assert _no_temporaries(run)


def test_safetensors_disk_error_is_a_write_error(tmp_path, monkeypatch):
    """Without a tmpfs: safetensors reports ENOSPC as SafetensorError("... os error 28"), not OSError."""
    import safetensors.torch as st
    from safetensors import SafetensorError

    target = tmp_path / layout.WEIGHTS
    target.write_bytes(b"old weights")

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(st, "save_file", full)
    with pytest.raises(WriteError, match=rf"cannot write {target}: No space left on device"):
        weights.save_safetensors(target, {"w": torch.zeros(2)})
    assert target.read_bytes() == b"old weights" and _no_temporaries(tmp_path)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT])
def test_atomic_writes_turn_disk_errors_into_one_message(tmp_path, code):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"good")
    with pytest.raises(WriteError, match=f"cannot write {target}: {os.strerror(code)}"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(code, os.strerror(code))
    assert target.read_bytes() == b"good" and _no_temporaries(tmp_path)
    with pytest.raises(FileNotFoundError):     # other errors of the writer are not disguised
        with atomic_path(target) as tmp:
            raise FileNotFoundError(errno.ENOENT, "input missing")
    assert isinstance(WriteError("x"), CnnDeployError)


def test_final_files_get_the_usual_mode(tmp_path):
    """Bug found here: safetensors files came out 0600 (mkstemp's mode) while JSON files were 0644."""
    umask = os.umask(0o022)
    try:
        weights.save_weights(tmp_path / layout.WEIGHTS, torch.nn.Linear(2, 2))
        write_bytes_atomic(tmp_path / "x.json", b"{}")
    finally:
        os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == \
        {layout.WEIGHTS: 0o644, "x.json": 0o644}
