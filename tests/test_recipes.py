"""Recipe options of the training loop: weight EMA, random erasing, lr schedules."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnndeploy.artifacts import files as layout
from cnndeploy.cli import SCHEDULES as CLI_SCHEDULES, main
from cnndeploy.data.device import Augment, DeviceSplit, erase_mask
from cnndeploy.errors import CheckpointError, CnnDeployError
from cnndeploy.models import weights
from cnndeploy.train.checkpoint import load_checkpoint, save_checkpoint
from cnndeploy.train.ema import ModelEma, ema_decay
from cnndeploy.train.fit import TrainConfig, train
from cnndeploy.train.schedule import SCHEDULES, lr_at
from trainkit import interrupt_after_epochs


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))


# --- EMA ---------------------------------------------------------------------------------------

def test_ema_of_constant_weights_equals_them():
    net = _net()
    ema = ModelEma(net, 0.9)
    for step in range(1, 20):
        ema.update(step)
    for k, v in net.state_dict().items():
        assert torch.equal(ema.module.state_dict()[k], v), k


def test_ema_matches_a_hand_computation_for_two_steps():
    net, decay = _net(), 0.9
    ema = ModelEma(net, decay)
    w = net[3].weight
    with torch.no_grad():
        w.fill_(1.0)
    ema.update(1)                       # first update: decay 0, a copy
    assert torch.equal(ema.module[3].weight, torch.ones_like(w))
    with torch.no_grad():
        w.fill_(3.0)
    ema.update(2)                       # decay 1 - 2^-0.75 = 0.4054 (warm-up), below the 0.9 cap
    d = 1 - 2 ** -0.75
    assert ema_decay(2, decay) == pytest.approx(d)
    assert torch.allclose(ema.module[3].weight, torch.full_like(w, d * 1 + (1 - d) * 3))
    assert ema_decay(10 ** 6, decay) == decay   # the warm-up ends at the decay asked for


def test_ema_averages_bn_statistics_and_copies_the_batch_counter():
    net = _net()
    ema = ModelEma(net, 0.5)
    bn = net[1]
    with torch.no_grad():
        bn.running_mean.fill_(2.0)
        bn.num_batches_tracked.fill_(7)
    ema.update(1)
    with torch.no_grad():
        bn.running_mean.fill_(4.0)
        bn.num_batches_tracked.fill_(9)
    ema.update(10 ** 6)                 # decay 0.5
    assert torch.allclose(ema.module[1].running_mean, torch.full((2,), 3.0))
    assert int(ema.module[1].num_batches_tracked) == 9
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def _cfg(mini_mnist: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="lenet5", dataset="mnist", out=str(out), data_dir=str(mini_mnist), device="cpu",
                subset=192, batch_size=64)
    return TrainConfig(**{**base, **kw})


def test_ema_run_saves_the_average_and_resumes_bit_for_bit(mini_mnist, tmp_path, monkeypatch):
    kw = dict(epochs=2, subset=128, ema=0.9, random_erasing=0.5, schedule="cosine")
    train(_cfg(mini_mnist, tmp_path / "straight", **kw), progress=False)
    with monkeypatch.context() as m:
        interrupt_after_epochs(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(mini_mnist, tmp_path / "resumed", **kw), progress=False)
    train(_cfg(mini_mnist, tmp_path / "resumed", **kw), resume=True, progress=False)
    runs = [tmp_path / "straight", tmp_path / "resumed"]
    (a, _), (b, _) = (weights.load_tensors(r / layout.WEIGHTS) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ckpt = weights.load_tensors(runs[0] / layout.CHECKPOINT)[0]
    assert all(torch.equal(a[k], ckpt["ema." + k]) for k in a)          # the model saved is the EMA
    assert any(not torch.equal(a[k], ckpt["model." + k]) for k in a)    # ... not the raw weights
    logs = [[json.loads(x) for x in (r / "log.jsonl").read_text().splitlines()] for r in runs]
    assert logs[0] == [{**row, **{k: logs[0][i][k] for k in ("seconds", "train_seconds", "eval_seconds",
                                                             "data_seconds", "compute_seconds")}}
                       for i, row in enumerate(logs[1])]
    assert all("raw_test_accuracy" in row for row in logs[0])
    config = json.loads((runs[0] / "metrics.json").read_text())["config"]
    assert (config["ema"], config["random_erasing"], config["schedule"]) == (0.9, 0.5, "cosine")


def test_checkpoint_ema_state_is_checked(tmp_path):
    net, opt = _net(), None
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    state = {"epoch": 1, "step": 1, "history": [], "seconds_in_epochs": 0.0}
    plain, averaged = tmp_path / "plain.safetensors", tmp_path / "ema.safetensors"
    save_checkpoint(plain, model=net, optimizer=opt, rng={}, state=state)
    save_checkpoint(averaged, model=net, optimizer=opt, rng={}, state=state, ema=ModelEma(net, 0.9).module)
    load_checkpoint(averaged, model=_net(), optimizer=opt, ema=ModelEma(_net(), 0.9).module)
    with pytest.raises(CheckpointError, match="holds no ema"):
        load_checkpoint(plain, model=_net(), optimizer=opt, ema=ModelEma(_net(), 0.9).module)
    with pytest.raises(CheckpointError, match="holds ema"):
        load_checkpoint(averaged, model=_net(), optimizer=opt)
    wider = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 3))
    tensors, meta = weights.load_tensors(averaged)
    tensors.update({f"ema.{k}": v for k, v in wider.state_dict().items()})
    weights.save_safetensors(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_checkpoint(tmp_path / "bad.safetensors", model=_net(), optimizer=opt,
                        ema=ModelEma(_net(), 0.9).module)


# --- random erasing ----------------------------------------------------------------------------

def test_random_erasing_erases_the_expected_fraction_reproducibly():
    masks = [erase_mask(4000, 28, 28, 0.5, torch.Generator().manual_seed(3), torch.device("cpu"))
             for _ in range(2)]
    assert torch.equal(masks[0], masks[1])
    erased = masks[0].flatten(1).any(1)
    assert 0.47 < erased.float().mean().item() < 0.53
    area = masks[0].flatten(1).sum(1)[erased].float() / (28 * 28)
    # timm's 2%-33% of the image, give or take the rounding of each side to whole pixels
    assert area.min() >= 0.01 and area.max() <= 0.38 and 0.14 < area.mean() < 0.2
    gen = torch.Generator().manual_seed(3)
    a, b = (erase_mask(64, 28, 28, 0.5, gen, torch.device("cpu")) for _ in range(2))
    assert not torch.equal(a, b)                                          # a new draw per batch
    assert not erase_mask(64, 28, 28, 0.0, gen, torch.device("cpu")).any()


def test_erasing_sets_pixels_to_the_mean_and_p0_draws_nothing():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, size=(32, 1, 8, 8), dtype=np.uint8)
    y = np.zeros(32, dtype=np.int64)
    split = DeviceSplit(x, y, mean=[0.0], std=[1.0], device=torch.device("cpu"))
    g0, g1 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    plain = list(split.batches(16, generator=g0, augment=Augment()))
    off = list(split.batches(16, generator=g1, augment=Augment(erase=0.0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain, off))
    assert torch.equal(g0.get_state(), g1.get_state())                   # p=0: the stream is untouched
    erased = next(split.batches(32, generator=torch.Generator().manual_seed(1), augment=Augment(erase=1.0)))[0]
    assert ((erased == 0).flatten(1).any(1)).all()                       # every image, mean colour 0
    rgb = rng.integers(1, 256, size=(32, 3, 8, 8), dtype=np.uint8)
    nhwc = DeviceSplit(rgb, y, mean=[0.0] * 3, std=[1.0] * 3, device=torch.device("cpu"), channels_last=True)
    batch = next(nhwc.batches(8, generator=torch.Generator().manual_seed(1), augment=Augment(erase=1.0)))[0]
    assert batch.is_contiguous(memory_format=torch.channels_last)         # the layout the GPU is fast in


# --- schedules ---------------------------------------------------------------------------------

def test_schedule_shapes():
    total, peak, warmup = 200, 0.4, 0.1
    curves = {s: [lr_at(i, total_steps=total, peak=peak, warmup=warmup, schedule=s) for i in range(total)]
              for s in SCHEDULES}
    assert curves["linear"] == [lr_at(i, total_steps=total, peak=peak, warmup=warmup) for i in range(total)]
    cos = curves["cosine"]
    assert cos[:20] == curves["linear"][:20] and cos[20] == pytest.approx(peak)
    assert cos[-1] < 1e-4 and all(a >= b for a, b in zip(cos[20:], cos[21:]))
    assert cos[110] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 90 / 180)))
    one = curves["onecycle"]
    assert max(range(total), key=one.__getitem__) == 20 and one[20] == pytest.approx(peak)
    assert one[0] == pytest.approx(peak / 25) and one[-1] == pytest.approx(peak / 250000)
    with pytest.raises(ValueError, match="expected one of"):
        lr_at(0, total_steps=10, peak=1.0, warmup=0.1, schedule="step")


def test_cli_schedules_are_the_loops():
    assert CLI_SCHEDULES == SCHEDULES


# --- flags, recipes, resume --------------------------------------------------------------------

@pytest.mark.parametrize("args,expected", [
    (["--ema", "1"], "expected a decay in (0, 1)"),
    (["--ema", "-0.5"], "expected a decay in (0, 1)"),
    (["--random-erasing", "1.5"], "expected a number in [0.0, 1.0]"),
    (["--schedule", "step"], "invalid choice"),
])
def test_recipe_flags_are_validated(args, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "lenet5", "--dataset", "mnist", "--out", str(tmp_path / "r"), *args])
    assert e.value.code == 2 and expected in capsys.readouterr().err


def test_api_values_are_checked_and_defaults_are_todays(mini_mnist, tmp_path):
    resolved = TrainConfig(model="resnet18", dataset="cifar10", out="x").resolved()
    assert (resolved.schedule, resolved.ema, resolved.random_erasing) == ("linear", 0.0, 0.0)
    with pytest.raises(CnnDeployError, match="expected 0 .off. or a decay in"):
        train(_cfg(mini_mnist, tmp_path / "r", ema=1.5), progress=False)
    assert not (tmp_path / "r").exists()


def test_resume_refuses_a_different_recipe_option_and_reads_old_checkpoints_as_off(mini_mnist, tmp_path,
                                                                                    monkeypatch, capsys):
    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        interrupt_after_epochs(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(mini_mnist, out, epochs=2), progress=False)
    code = main(["train", "--model", "lenet5", "--dataset", "mnist", "--data-dir", str(mini_mnist),
                 "--out", str(out), "--resume", "--ema", "0.99", "--no-progress"])
    assert code == 2 and "--ema saved 0.0 vs given 0.99" in capsys.readouterr().err
    # a checkpoint written before these options existed resumes as what it was: all off
    tensors, meta = weights.load_tensors(out / layout.CHECKPOINT)
    state = json.loads(meta["state"])
    for k in ("ema", "random_erasing", "schedule"):
        del state["config"][k]
    weights.save_safetensors(out / layout.CHECKPOINT, tensors, {**meta, "state": json.dumps(state)})
    metrics = train(_cfg(mini_mnist, out, epochs=2), resume=True, progress=False)
    assert (metrics["config"]["ema"], metrics["config"]["schedule"]) == (0.0, "linear")
