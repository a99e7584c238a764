import json

import pytest
import torch

from cnndeploy.models import weights
from cnndeploy.cli import main
from cnndeploy.models import create_model
from cnndeploy.train.fit import TrainConfig, train
from cnndeploy.train.prune import count, prune_model


@pytest.mark.parametrize("name,shape", [("resnet20", (3, 32, 32)), ("resnet18", (1, 28, 28)),
                                        ("alexnet", (3, 32, 32)), ("lenet5", (1, 28, 28))])
def test_pruning_removes_channels_and_keeps_residual_shapes(name, shape):
    torch.manual_seed(0)
    model = create_model(name, 10, *shape).eval()
    before = count(model, shape)
    prune_model(model, shape, amount=0.5, method="l2", round_to=None if name == "lenet5" else 8)
    after = count(model, shape)
    assert after["macs"] * 3 <= before["macs"] and after["params"] < before["params"]
    x = torch.randn(2, *shape)
    assert model(x).shape == (2, 10)  # classifier keeps its outputs; residual adds still line up
    widths = model.widths()
    if name != "lenet5":
        flat = [v for key, vals in widths.items() if key not in ("blocks", "dropout") for v in vals]
        assert all(v % 8 == 0 for v in flat), widths
    rebuilt = create_model(name, 10, *shape, **widths).eval()
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt(x), model(x))


def test_prune_cli_writes_a_run_that_every_command_takes(mini_mnist, tmp_path, capsys, caplog):
    run = tmp_path / "lenet"
    train(TrainConfig(model="lenet5", dataset="mnist", out=str(run), data_dir=str(mini_mnist), epochs=2,
                      device="cpu"), progress=False)
    with caplog.at_level("INFO", logger="cnndeploy"):
        assert main(["prune", str(run), "--amount", "0.5", "--finetune-epochs", "1", "--round-to", "0",
                     "--data-dir", str(mini_mnist), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "fewer" in out
    # The log line and the summary show the same numbers in the same formats.
    logged = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("pruned lenet5: "))
    macs = out.split(" (")[0].removeprefix("MACs ")
    accuracy = out.split("test accuracy ")[1].split(" pruned")[0]
    assert f"MACs {macs}, " in logged and f"test accuracy {accuracy} before fine-tune" in logged
    pruned = tmp_path / "lenet-pruned50"
    report = json.loads((pruned / "prune.json").read_text())
    assert report["macs_reduction"] >= 3 and report["after_finetune"]["test_accuracy"] > 0.85
    meta = json.loads((pruned / "model.json").read_text())
    assert meta["widths"]["conv"] == [3, 8]
    assert main(["eval", str(pruned), "--data-dir", str(mini_mnist), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == report["after_finetune"]["test_accuracy"]
    assert main(["export", str(pruned), "--onnx", "--data-dir", str(mini_mnist)]) == 0
    model, _ = weights.load_run(pruned)
    assert sum(p.numel() for p in model.parameters()) == report["after_finetune"]["params"]


@pytest.mark.parametrize("amount", ["0", "1", "1.5", "-0.2"])
def test_amount_outside_zero_one_is_refused(amount, tmp_path, capsys):
    assert main(["prune", str(tmp_path), "--amount", amount]) == 2
    assert "expected a fraction of channels in (0, 1)" in capsys.readouterr().err


def test_bn_recalibration_replaces_stale_running_statistics():
    import numpy as np
    import torch
    from torch import nn

    from cnndeploy.data.device import DeviceSplit
    from cnndeploy.train.prune import recalibrate_bn

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    bn = model[1]
    bn.running_mean.fill_(100.0)                      # stale: what pruning leaves behind
    pixels = np.random.default_rng(0).integers(0, 256, (64, 1, 8, 8), dtype=np.uint8)
    split = DeviceSplit(pixels, np.zeros(64, np.int64), mean=(0.5,), std=(0.25,), device=torch.device("cpu"))
    recalibrate_bn(model, split, batch_size=16)
    with torch.no_grad():
        x = torch.cat([x for x, _ in split.batches(64)])
        expected = model[0](x).mean(dim=(0, 2, 3))
    assert torch.allclose(bn.running_mean, expected, atol=1e-4)
    assert bn.momentum == 0.1 and not model.training   # restored for fine-tuning and eval


@pytest.mark.parametrize("trained,finetune", [(1, 1), (6, 1), (8, 1), (10, 2), (14, 2), (40, 8)])
def test_default_finetune_is_at_most_a_fifth_of_the_training(trained, finetune):
    from cnndeploy.train.prune import default_finetune_epochs

    assert default_finetune_epochs(trained) == finetune


def test_distillation_loss_is_the_label_loss_share_when_student_matches_teacher():
    from cnndeploy.train.loop import DISTILL_WEIGHT, distillation_loss

    torch.manual_seed(0)
    logits = torch.randn(8, 10, requires_grad=True)
    hard = torch.nn.functional.cross_entropy(logits, torch.randint(0, 10, (8,)))
    same = distillation_loss(logits, logits.detach(), hard)
    assert torch.allclose(same, (1 - DISTILL_WEIGHT) * hard, atol=1e-6)
    other = distillation_loss(logits, torch.randn(8, 10), hard)
    assert other > same
    other.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0  # the student learns from it


def test_prune_with_distillation_records_its_teacher_and_refuses_a_foreign_one(mini_mnist, tmp_path, capsys):
    run = tmp_path / "lenet"
    train(TrainConfig(model="lenet5", dataset="mnist", out=str(run), data_dir=str(mini_mnist), epochs=2,
                      device="cpu"), progress=False)
    assert main(["prune", str(run), "--amount", "0.5", "--round-to", "0", "--distill",
                 "--data-dir", str(mini_mnist), "--no-progress"]) == 0
    report = json.loads((tmp_path / "lenet-pruned50" / "prune.json").read_text())
    assert report["finetune_teacher"] == str(run.resolve()) and report["after_finetune"]["test_accuracy"] > 0.85
    # A teacher that names other classes is refused before any training.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    meta = json.loads((run / "model.json").read_text())
    (foreign / "model.json").write_text(json.dumps({**meta, "classes": list("abcdefghij")}))
    (foreign / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    capsys.readouterr()
    with pytest.raises(Exception, match="teacher .*foreign.* classes"):
        train(TrainConfig(model="lenet5", dataset="mnist", out=str(tmp_path / "student"),
                          data_dir=str(mini_mnist), epochs=1, device="cpu", teacher=str(foreign)),
              progress=False)
    assert not (tmp_path / "student" / "metrics.json").exists()
