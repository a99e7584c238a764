import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cnndeploy.artifacts import files as layout
from cnndeploy.models import weights
from cnndeploy.cli import main
from cnndeploy.errors import CnnDeployError, TrainingError
from cnndeploy.train import fit
from cnndeploy.runtime.evaluate import evaluate_run
from cnndeploy.train.fit import TrainConfig, train
from trainkit import interrupt_after_epochs

RUN_FILES = {"model.safetensors", "model.json", "metrics.json", "log.jsonl", "curves.png",
             "checkpoint.safetensors"}


def _cfg(mini_mnist: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="lenet5", dataset="mnist", out=str(out), data_dir=str(mini_mnist), device="cpu")
    return TrainConfig(**{**base, **kw})


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return weights.load_tensors(run / layout.WEIGHTS)[0]


@pytest.fixture(scope="module")
def lenet_run(mini_mnist, tmp_path_factory) -> tuple[Path, dict]:
    """LeNet-5, 2 epochs on the shipped 10k-image MNIST subset."""
    out = tmp_path_factory.mktemp("runs") / "lenet"
    return out, train(_cfg(mini_mnist, out, epochs=2), progress=False)


def test_two_epoch_lenet_reaches_90_percent_and_writes_the_run_directory(lenet_run):
    out, metrics = lenet_run
    assert metrics["test_accuracy"] >= 0.90          # measured: 0.9445 on 2 CPU cores
    assert {p.name for p in out.iterdir()} == RUN_FILES
    saved = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= saved["test_accuracy"] <= 1.0 and saved["test_accuracy"] == metrics["test_accuracy"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert {"lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"} <= set(log[0])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((out / "model.json").read_text())
    assert meta["model"] == "lenet5" and meta["widths"] == {"conv": [6, 16], "fc": [120, 84]}
    assert (meta["channels"], meta["height"], meta["width"]) == (1, 28, 28)
    assert meta["classes"] == [str(i) for i in range(10)] and meta["dataset_source"] == "mnist-idx"


def test_no_pickle_anywhere_in_the_run_directory(lenet_run):
    """Every file is safetensors, JSON or PNG, each checked by parsing it (no pickle, no torch zip)."""
    out, _ = lenet_run
    for p in out.iterdir():
        if p.suffix == ".safetensors":
            with safe_open(str(p), "pt") as f:
                assert list(f.keys())
        elif p.suffix in (".json", ".jsonl"):
            for line in p.read_text().splitlines() if p.suffix == ".jsonl" else [p.read_text()]:
                json.loads(line)
        else:
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p.name


def test_eval_remeasures_the_same_accuracy_from_the_files(lenet_run, mini_mnist):
    out, metrics = lenet_run
    result = evaluate_run(out, data_dir=str(mini_mnist), device="cpu")
    assert result["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert result["n"] == 2000


def test_checkpoint_and_weights_round_trip(lenet_run):
    out, _ = lenet_run
    model, meta = weights.load_run(out)
    ckpt = weights.load_tensors(out / layout.CHECKPOINT)[0]
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["model." + key])
    with safe_open(str(out / layout.CHECKPOINT), "pt") as f:
        state = json.loads(f.metadata()["state"])
    assert state["epoch"] == 2 and state["step"] > 0 and len(state["history"]) == 2
    assert {"rng.torch", "rng.data"} <= set(ckpt)


def test_same_seed_same_weights(mini_mnist, tmp_path):
    a = train(_cfg(mini_mnist, tmp_path / "a", epochs=1, subset=512), progress=False)
    b = train(_cfg(mini_mnist, tmp_path / "b", epochs=1, subset=512), progress=False)
    assert a["test_accuracy"] == b["test_accuracy"]
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(mini_mnist, tmp_path, monkeypatch):
    # AlexNet has dropout, so this also checks that the RNG state travels with the checkpoint.
    kw = dict(model="alexnet", epochs=3, subset=192, batch_size=64)
    train(_cfg(mini_mnist, tmp_path / "straight", **kw), progress=False)
    with monkeypatch.context() as m:
        interrupt_after_epochs(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(mini_mnist, tmp_path / "resumed", **kw), progress=False)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    train(_cfg(mini_mnist, tmp_path / "resumed", **kw), resume=True, progress=False)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [(tmp_path / d / "log.jsonl").read_text().splitlines() for d in ("straight", "resumed")]
    assert [json.loads(x)["test_accuracy"] for x in logs[0]] == [json.loads(x)["test_accuracy"] for x in logs[1]]


def test_resume_removes_temp_files_a_killed_write_left_behind(mini_mnist, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_after_epochs(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(mini_mnist, out, epochs=2, subset=128), progress=False)
    stale = out / ".checkpoint.safetensors.k1ll3d.tmp"   # what SIGKILL mid-write leaves
    stale.write_bytes(b"half a checkpoint")
    mine = out / ".notes.tmp"                              # not ours: left alone
    mine.write_text("user file")
    train(_cfg(mini_mnist, out, epochs=2, subset=128), resume=True, progress=False)
    assert not stale.exists() and mine.exists() and (out / "metrics.json").is_file()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(mini_mnist, tmp_path, monkeypatch):
    real = fit.train_one_epoch
    calls = {"n": 0}

    def poison_second_epoch(model, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return real(model, *args, **kwargs)
    monkeypatch.setattr(fit, "train_one_epoch", poison_second_epoch)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2.*last good checkpoint"):
        train(_cfg(mini_mnist, out, epochs=3, subset=256), progress=False)
    assert not (out / "metrics.json").exists() and not (out / "model.safetensors").exists()
    with safe_open(str(out / layout.CHECKPOINT), "pt") as f:
        assert json.loads(f.metadata()["state"])["epoch"] == 1
        assert all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys() if k.startswith("model."))


def test_a_finished_run_is_never_overwritten(lenet_run, mini_mnist, capsys):
    out, _ = lenet_run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = main(["train", "--model", "lenet5", "--dataset", "mnist", "--data-dir", str(mini_mnist),
                 "--out", str(out), "--epochs", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "already holds a trained model" in err and "Traceback" not in err
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}


def test_resume_refuses_changed_options_and_missing_checkpoints(mini_mnist, tmp_path, monkeypatch):
    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        interrupt_after_epochs(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(mini_mnist, out, epochs=2, subset=256), progress=False)
    with pytest.raises(CnnDeployError, match="--lr saved 0.05 vs given 0.3"):
        train(_cfg(mini_mnist, out, lr=0.3), resume=True, explicit={"lr"})
    with pytest.raises(CnnDeployError, match="nothing to resume"):
        train(_cfg(mini_mnist, tmp_path / "fresh"), resume=True)


@pytest.mark.parametrize("dataset,expected", [
    ("/no/such/folder", "unknown dataset"),
    ("mnist", "not found"),
])
def test_bad_dataset_gives_one_line_error_and_exit_2(dataset, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CNNDEPLOY_DATA", raising=False)
    monkeypatch.setenv("CNNDEPLOY_CACHE", str(tmp_path / "cache"))
    code = main(["train", "--model", "lenet5", "--dataset", dataset, "--data-dir", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_cli_eval_of_a_missing_run_dir(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"<html>not found</html>",
                                     b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n"])
def test_corrupt_weights_and_checkpoints_are_named_as_such(lenet_run, tmp_path, content):
    out, _ = lenet_run
    run = tmp_path / "copy"
    run.mkdir()
    (run / "model.json").write_bytes((out / "model.json").read_bytes())
    (run / layout.WEIGHTS).write_bytes(content)
    (run / layout.CHECKPOINT).write_bytes(content)
    with pytest.raises(CnnDeployError, match="corrupt or incomplete"):
        weights.load_run(run)
    with pytest.raises(CnnDeployError, match="corrupt or incomplete"):
        train(TrainConfig(model="lenet5", dataset="mnist", out=str(run)), resume=True)


def test_mismatched_weights_list_the_keys(lenet_run, tmp_path):
    out, _ = lenet_run
    run = tmp_path / "wide"
    run.mkdir()
    meta = json.loads((out / "model.json").read_text())
    meta["widths"]["fc"] = [100, 84]
    (run / "model.json").write_text(json.dumps(meta))
    (run / layout.WEIGHTS).write_bytes((out / layout.WEIGHTS).read_bytes())
    with pytest.raises(CnnDeployError, match=r"mis-shaped.*classifier\.0\.weight"):
        weights.load_run(run)


def _png_tree(root: Path, size: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for label, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 90, (size, size, 3)) + 120 * label  # dogs are brighter
                Image.fromarray(pixels.astype("uint8")).save(root / split / cls / f"{i}.png")
    return root


def test_train_and_eval_on_a_users_image_folder(tmp_path):
    data = _png_tree(tmp_path / "pets", 32)
    out = tmp_path / "run"
    metrics = train(TrainConfig(model="lenet5", dataset=str(data), out=str(out), epochs=3, batch_size=8,
                                device="cpu"), progress=False)
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == ["cat", "dog"] and meta["dataset"] == "pets" and meta["channels"] == 3
    assert meta["dataset_source"] == "image-folder"
    assert evaluate_run(out, device="cpu")["test_accuracy"] == metrics["test_accuracy"]


def test_a_batch_larger_than_the_training_split_is_fitted_to_it_and_recorded(tmp_path, caplog):
    from cnndeploy import pipeline

    data = _png_tree(tmp_path / "pets", 32)  # 24 training images; the recipe's batch is 256
    cfg = pipeline.pipeline_config(dataset=str(data), models=["lenet5"], device="cpu")
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="cnndeploy"):
        metrics = train(cfg.train_config("lenet5", out, 1), progress=False)
    assert "batch size 256 is larger than the 24 training images: training with batch 24" in caplog.text
    assert metrics["config"]["batch_size"] == 24
    assert json.loads((out / "metrics.json").read_text())["config"]["batch_size"] == 24
    # The pipeline asks for the recipe's 256 again: the run it finds is what that gives, not a clash.
    pipeline._check_finished_run(cfg, "lenet5", out, 1)


def test_fitted_batch_size_keeps_batches_that_fit_and_a_multiple_of_the_processes():
    assert fit.fitted_batch_size(8, 24) == 8
    assert fit.fitted_batch_size(24, 24) == 24
    assert fit.fitted_batch_size(256, 41) == 41
    assert fit.fitted_batch_size(256, 41, world_size=2) == 40
    assert fit.fitted_batch_size(256, 3, world_size=2) == 256  # too few images: the layout check says so


def test_images_too_small_for_the_model_are_a_clear_error(tmp_path):
    data = _png_tree(tmp_path / "tiny", 4)
    with pytest.raises(CnnDeployError, match="too small"):
        train(TrainConfig(model="lenet5", dataset=str(data), out=str(tmp_path / "r"), epochs=1,
                          device="cpu"), progress=False)


def test_resume_keeps_the_saved_data_dir_and_refuses_other_data(mini_mnist, shared_data, tmp_path, monkeypatch):
    kw = dict(epochs=2, subset=256)
    with monkeypatch.context() as m:
        interrupt_after_epochs(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(mini_mnist, tmp_path / "r", **kw), progress=False)
    moved = TrainConfig(model="lenet5", dataset="mnist", out=str(tmp_path / "r"), data_dir=str(shared_data))
    with pytest.raises(CnnDeployError, match="the data differs"):
        train(moved, resume=True, explicit={"data_dir"}, progress=False)
    # Without a typed --data-dir the saved one is used, even with $CNNDEPLOY_DATA elsewhere.
    monkeypatch.setenv("CNNDEPLOY_DATA", str(shared_data))
    plain = TrainConfig(model="lenet5", dataset="mnist", out=str(tmp_path / "r"))
    assert train(plain, resume=True, progress=False)["test_images"] == 2000
    with pytest.raises(CnnDeployError, match="holds a finished run"):
        train(plain, resume=True, progress=False)


@pytest.mark.parametrize("args,expected", [
    (["--label-smoothing", "2"], "expected a number in [0.0, 1.0)"),
    (["--batch-size", "1"], "expected at least 2"),
])
def test_out_of_range_options(args, expected, mini_mnist, tmp_path, capsys):
    with pytest.raises(SystemExit) if "smoothing" in args[0] else _nothing():
        code = main(["train", "--model", "lenet5", "--dataset", "mnist", "--data-dir", str(mini_mnist),
                     "--out", str(tmp_path / "r"), *args])
        assert code == 2
    assert expected in capsys.readouterr().err


def test_out_that_is_a_file(mini_mnist, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["train", "--model", "lenet5", "--dataset", "mnist", "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in capsys.readouterr().err


def _nothing():
    import contextlib
    return contextlib.nullcontext()


def test_autocast_follows_precision_on_cpu():
    from cnndeploy.train.loop import autocast_for, uses_bf16

    cpu = torch.device("cpu")
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with autocast_for(cpu, "bf16"):
        assert conv(x).dtype == torch.bfloat16
    for precision in ("auto", "fp32"):  # CPU stays fp32 unless bf16 is asked for
        with autocast_for(cpu, precision):
            assert conv(x).dtype == torch.float32
    assert uses_bf16(torch.device("cuda"), "auto") and not uses_bf16(torch.device("cuda"), "fp32")
    with pytest.raises(ValueError, match="expected one of auto, fp32, bf16"):
        uses_bf16(cpu, "fp16")


def test_bf16_training_on_cpu_saves_fp32_weights_and_pruning_inherits_it(mini_mnist, tmp_path, capsys):
    run = tmp_path / "bf16"
    assert main(["train", "--model", "lenet5", "--dataset", "mnist", "--data-dir", str(mini_mnist),
                 "--epochs", "1", "--subset", "1024", "--precision", "bf16", "--device", "cpu",
                 "--out", str(run), "--no-progress"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["precision"] == "bf16"
    weights = _weights(run)
    assert all(v.dtype == torch.float32 for v in weights.values())
    fp32 = train(_cfg(mini_mnist, tmp_path / "fp32", epochs=1, subset=1024), progress=False)
    assert fp32["config"]["precision"] == "auto"
    # Same seed and data: only the arithmetic differs, so the weights must too.
    assert any(not torch.equal(weights[k], _weights(tmp_path / "fp32")[k]) for k in weights)
    # Reported accuracy is an fp32 evaluation: `eval` of the saved weights measures the same.
    capsys.readouterr()
    assert main(["eval", str(run), "--data-dir", str(mini_mnist), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == metrics["test_accuracy"]
    assert main(["eval", str(run), "--data-dir", str(mini_mnist)]) == 0
    assert capsys.readouterr().out == (f"{run} (lenet5): test accuracy {100 * metrics['test_accuracy']:.2f}% "
                                       "on 2,000 test images (mnist-idx)\n")
    assert main(["prune", str(run), "--amount", "0.5", "--round-to", "0", "--data-dir", str(mini_mnist),
                 "--no-progress"]) == 0
    report = json.loads((tmp_path / "bf16-pruned50" / "prune.json").read_text())
    assert report["finetune_precision"] == "bf16" and report["finetune_epochs"] == 1


def test_an_unknown_precision_is_one_clear_error_before_anything_is_written(mini_mnist, tmp_path):
    with pytest.raises(CnnDeployError, match="precision 'fp16': expected one of auto, fp32, bf16"):
        train(_cfg(mini_mnist, tmp_path / "run", epochs=1, precision="fp16"), progress=False)
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()
