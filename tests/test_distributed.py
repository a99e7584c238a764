"""Data-parallel training under torchrun (gloo, CPU): the same steps, images and weights as one process.

Design under test (README, "Distributed training"): --batch-size is the global batch; rank r of
W takes slice r of every global batch in the order one process would use, with the same crop
offsets. LeNet-5 has no BatchNorm (and SyncBatchNorm has no CPU kernel), so on CPU the only
difference from one process is the order of float32 sums: each rank averages the loss over
B/W images and DDP averages the W gradients, where one process averages over B at once.
Measured after 64 steps: max |weight difference| 3.5e-7 (weights up to 0.45). Summation order
matters more than it looks: the same single-process run with 2 threads instead of 1 lands
3.4e-3 away after 78 steps (BENCHMARKS.md), so the reference runs with 1 thread, as each rank
does (torchrun sets OMP_NUM_THREADS=1), and WEIGHT_ATOL = 1e-4 sits far between that rounding
noise and what the bugs this test is for would do, measured in this configuration: crop offsets
drawn per half-batch instead of for the global batch, 0.18; gradients summed instead of
averaged over 2 ranks (twice the lr), 0.53.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnndeploy import system
from cnndeploy.artifacts import files as layout
from cnndeploy.models import weights
from cnndeploy.data.device import Augment, DeviceSplit, ShardedSplit
from cnndeploy.errors import CnnDeployError
from cnndeploy.models import create_model
from cnndeploy.train import distributed, fit
from cnndeploy.train.distributed import Dist
from cnndeploy.train.fit import TrainConfig, train

ENTRY = Path(__file__).with_name("ddp_rank_cwd.py")
RUN_FILES = {"model.safetensors", "model.json", "metrics.json", "log.jsonl", "curves.png",
             "checkpoint.safetensors"}
SUBSET, BATCH = 4096, 64          # 64 optimizer steps per epoch, whatever the number of processes
WEIGHT_ATOL = 1e-4
ACCURACY_ATOL = 1 / 2000          # one test image of 2,000


def _train_args(data_dir: Path, epochs: int, subset: int = SUBSET) -> list[str]:
    return ["train", "--model", "lenet5", "--dataset", "mnist", "--data-dir", str(data_dir), "--device", "cpu",
            "--subset", str(subset), "--epochs", str(epochs), "--batch-size", str(BATCH), "--out", "run",
            "--no-progress"]


def _torchrun(cwd: Path, args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """The real launcher: torchrun --standalone picks a free port, so parallel test runs do not collide."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(ENTRY), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _cfg(data_dir: Path, out: Path, epochs: int, subset: int = SUBSET) -> TrainConfig:
    return TrainConfig(model="lenet5", dataset="mnist", out=str(out), data_dir=str(data_dir), device="cpu",
                       subset=subset, epochs=epochs, batch_size=BATCH)


def _train_one_thread(cfg: TrainConfig) -> dict:
    """The single-process reference, with the one thread each torchrun worker gets."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = (weights.load_tensors(p / layout.WEIGHTS)[0] for p in (a, b))
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _state(run: Path) -> dict:
    from cnndeploy.train.checkpoint import checkpoint_state

    return checkpoint_state(run / layout.CHECKPOINT)


# --- the data split, in process ----------------------------------------------------------------

@pytest.mark.parametrize("world,erase", [(2, 0.0), (3, 0.0), (2, 0.5)])
def test_rank_shards_together_are_the_single_process_batches(world, erase):
    """Same images, crops, flips and erased rectangles per global batch, and the generator ends in
    the same state."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 3, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 10, size=50).astype(np.int64)
    args = dict(mean=[0.5] * 3, std=[0.25] * 3, device=torch.device("cpu"))
    aug, batch = Augment(pad=4, flip=True, erase=erase), 12
    gen = torch.Generator().manual_seed(7)
    single = list(DeviceSplit(x, y, **args).batches(batch, generator=gen, augment=aug, drop_last=True))
    ranks = []
    for r in range(world):
        g = torch.Generator().manual_seed(7)
        ranks.append(list(ShardedSplit(x, y, rank=r, world_size=world, **args).batches(12, generator=g,
                                                                                        augment=aug)))
        assert torch.equal(g.get_state(), gen.get_state())
    assert len(single) == 50 // batch and all(len(r) == len(single) for r in ranks)
    for step, (sx, sy) in enumerate(single):
        assert torch.equal(torch.cat([r[step][0] for r in ranks]), sx)
        assert torch.equal(torch.cat([r[step][1] for r in ranks]), sy)
        assert all(len(r[step][1]) == batch // world for r in ranks)


def test_shards_of_the_test_set_cover_it_once():
    for n, world in [(2000, 2), (7, 3), (3, 3)]:
        parts = [np.arange(n)[Dist(rank=r, world_size=world, active=True).shard(n)] for r in range(world)]
        assert np.array_equal(np.concatenate(parts), np.arange(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_layouts_that_cannot_split_are_refused_in_one_line():
    dist = Dist(rank=0, world_size=3, active=True)
    with pytest.raises(CnnDeployError, match="multiple of the 3 processes"):
        distributed.check_layout(dist, batch_size=64, train_images=4096, test_images=2000)
    with pytest.raises(CnnDeployError, match="at least 2"):
        distributed.check_layout(dist, batch_size=3, train_images=4096, test_images=2000)
    with pytest.raises(CnnDeployError, match="fewer than one global batch"):
        distributed.check_layout(dist, batch_size=66, train_images=60, test_images=2000)
    distributed.check_layout(Dist(), batch_size=3, train_images=2, test_images=1)  # one process: no rule


def test_sync_bn_is_refused_on_cpu_and_ignored_in_one_process(caplog):
    model = create_model("resnet20", 10, 3, 32, 32)
    with pytest.raises(CnnDeployError, match="SyncBatchNorm has no CPU"):
        distributed.sync_batchnorm(model, wanted=True, dist=Dist(world_size=2, active=True),
                                   device=torch.device("cpu"))
    assert distributed.sync_batchnorm(model, wanted=True, dist=Dist(), device=torch.device("cpu")) is model
    assert "ignored" in caplog.text


def test_torchrun_is_detected_from_its_environment(monkeypatch):
    for k in distributed.TORCHRUN_VARS:
        monkeypatch.delenv(k, raising=False)
    with distributed.session() as dist:
        assert dist == Dist() and dist.from_main(lambda: {"a": [1]}) == {"a": [1]}
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(CnnDeployError, match="MASTER_ADDR, MASTER_PORT not: launch .* with torchrun"):
        with distributed.session():
            pass


# --- torchrun, 2 processes, gloo ----------------------------------------------------------------

@pytest.fixture(scope="module")
def ddp_run(mini_mnist, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`torchrun --nproc-per-node 2 ... train` for one epoch, each rank in its own working folder."""
    cwd = tmp_path_factory.mktemp("ddp")
    proc = _torchrun(cwd, _train_args(mini_mnist, epochs=1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, proc


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(ddp_run, mini_mnist, tmp_path):
    cwd, proc = ddp_run
    run = cwd / "rank0" / "run"
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert list((cwd / "rank1").iterdir()) == [], "rank 1 wrote into its working folder"
    assert proc.stdout.count("test accuracy") == 1                     # rank 0 reports for all
    assert proc.stderr.count("epoch 1/1") == 1                         # and logs for all

    single = _train_one_thread(_cfg(mini_mnist, tmp_path / "single", epochs=1))
    ddp = json.loads((run / "metrics.json").read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert _state(run)["step"] == _state(tmp_path / "single")["step"] == SUBSET // BATCH
    assert abs(ddp["test_accuracy"] - single["test_accuracy"]) <= ACCURACY_ATOL
    assert ddp["test_accuracy"] > 0.5                                  # measured 0.7405: it learned
    assert _max_diff(run, tmp_path / "single") <= WEIGHT_ATOL


@pytest.mark.slow
def test_a_failure_on_rank_0_is_reported_once_and_stops_every_rank(ddp_run, mini_mnist):
    cwd, _ = ddp_run
    proc = _torchrun(cwd, _train_args(mini_mnist, epochs=1))           # the same --out: a finished run
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "already holds a trained model" in errors[0], proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.xfail(system.cpu_bf16_isa() == "amx_bf16", strict=False, reason=(
    "on a 2-core Intel Xeon with AMX (2026-12-02) the resumed two-process run ends 1.8e-3 (max |weight|) "
    "and 4 test images from the straight one, against 1e-4 on Zen 4 and AVX2 machines, while two processes "
    "from scratch match one within 1e-4 there: the epoch after the resume differs; not yet explained"))
def test_two_processes_resume_a_single_process_checkpoint(mini_mnist, tmp_path, monkeypatch):
    """Rank 0 reads the checkpoint and sends it: rank 1's folder has none and stays empty."""
    subset = SUBSET // 2
    straight = _train_one_thread(_cfg(mini_mnist, tmp_path / "straight", epochs=2, subset=subset))
    real = fit.save_checkpoint

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(fit, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            _train_one_thread(_cfg(mini_mnist, tmp_path / "rank0" / "run", epochs=2, subset=subset))
    first_epoch = _state(tmp_path / "rank0" / "run")["history"]

    proc = _torchrun(tmp_path, _train_args(mini_mnist, epochs=2, subset=subset) + ["--resume"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "rank0" / "run"
    assert list((tmp_path / "rank1").iterdir()) == []
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[:1] == first_epoch and [r["epoch"] for r in log] == [1, 2]
    state = _state(run)
    assert state["epoch"] == 2 and state["step"] == 2 * (subset // BATCH) and state["world_size"] == 2
    resumed = json.loads((run / "metrics.json").read_text())
    assert abs(resumed["test_accuracy"] - straight["test_accuracy"]) <= ACCURACY_ATOL
    assert _max_diff(run, tmp_path / "straight") <= WEIGHT_ATOL
