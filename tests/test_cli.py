import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnndeploy.cli import build_parser, main, train_config_from_args

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, **kw)


def test_help_lists_commands_without_importing_torch():
    probe = ("import sys, contextlib, io\nfrom cnndeploy.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
             "    try: main(['--help'])\n    except SystemExit: pass\n"
             "print('torch' in sys.modules, 'train' in out.getvalue(), 'eval' in out.getvalue())")
    assert _run("-c", probe).stdout.split() == ["False", "True", "True"]


def test_python_dash_m_and_usage_errors():
    ok = _run("-m", "cnndeploy", "--version")
    assert ok.returncode == 0 and ok.stdout.startswith("cnndeploy ")
    bad = _run("-m", "cnndeploy", "train", "--model", "vgg", "--dataset", "mnist")
    assert bad.returncode == 2 and "invalid choice: 'vgg'" in bad.stderr
    neg = _run("-m", "cnndeploy", "train", "--model", "lenet5", "--dataset", "mnist", "--epochs", "0")
    assert neg.returncode == 2 and "expected a positive integer" in neg.stderr


def test_reproduce_table1_smoke(mini_mnist, tmp_path):
    """The GPU script runs end to end on CPU with tiny settings and writes both result files."""
    proc = _run("benchmarks/reproduce_table1.py", "--smoke", "--only", "lenet5:mnist",
                "--data-dir", str(mini_mnist), "--out", str(tmp_path), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "table1-smoke-only-lenet5-mnist.json").read_text())
    (run,) = report["runs"]
    assert run["model"] == "lenet5" and run["paper"] == 0.9911 and 0 <= run["test_accuracy"] <= 1
    assert run["epochs"] == 1 and len(run["history"]) == 1
    assert "| lenet5 | mnist |" in (tmp_path / "table1-smoke-only-lenet5-mnist.md").read_text()


def _commands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return formatter.format_help()


def test_top_level_help_speaks_to_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "Thin command line" not in out and "ONNX" in out and "CIFAR-10" in out
    assert "Typical order" in out
    for command in _commands():
        assert f"  cnndeploy {command} " in out


@pytest.mark.parametrize("command", list(_commands()))
def test_every_option_has_help_with_its_default_and_every_command_an_example(command, capsys):
    parser = _commands()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = _option_help(parser, action)
        assert action.help, f"{command} {action.dest}: no help"
        if not action.option_strings:
            assert action.metavar and action.metavar != action.dest, f"{command} {action.dest}: no metavar"
        elif action.default is not None and action.default is not False:
            assert "default" in text, f"{command} {action.option_strings[0]}: default not shown:\n{text}"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    lines = capsys.readouterr().out.splitlines()
    examples = lines[lines.index("Examples:") + 1:]
    assert examples and all(line.strip().startswith(f"cnndeploy {command} ") for line in examples)


def test_train_help_shows_the_defaults_that_stand_behind_none():
    from cnndeploy.train.fit import TrainConfig

    parser = _commands()["train"]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    shown = []
    for action in parser._actions:
        default = defaults.get(action.dest)
        if default is not None and default is not False and default is not dataclasses.MISSING:
            assert f"default: {default}" in " ".join(_option_help(parser, action).split()), action.dest
            shown.append(action.dest)
    assert sorted(shown) == ["device", "holdout", "holdout_seed", "precision", "seed"]


def test_typed_train_options_are_explicit_and_the_rest_come_from_trainconfig():
    args = build_parser().parse_args(["train", "--model", "lenet5", "--dataset", "mnist", "--resume",
                                      "--seed", "0"])
    cfg, explicit = train_config_from_args(args)
    assert explicit == {"model", "dataset", "seed"}  # a typed default is still typed
    assert cfg.seed == 0 and cfg.lr is None and cfg.device == "auto" and cfg.precision == "auto"
    assert cfg.out == "runs/lenet5-mnist" and cfg.compile is False

    args = build_parser().parse_args(["train", "--model", "lenet5", "--dataset", "/x/shapes.tar.gz",
                                      "--device=cpu", "--compile", "--data-dir", "d"])
    cfg, explicit = train_config_from_args(args)
    assert explicit == {"model", "dataset", "device", "compile", "data_dir"}
    assert cfg.seed == 0 and cfg.device == "cpu" and cfg.compile is True and cfg.data_dir == "d"
    assert cfg.out == "runs/lenet5-shapes"


def test_resume_from_the_command_line_checks_only_typed_options(mini_mnist, tmp_path, monkeypatch, capsys):
    from cnndeploy.train import fit

    out = tmp_path / "run"
    common = ["train", "--model", "lenet5", "--dataset", "mnist", "--data-dir", str(mini_mnist),
              "--out", str(out), "--device", "cpu", "--no-progress"]
    real = fit.save_checkpoint

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(fit, "save_checkpoint", save_then_stop)
        assert main([*common, "--epochs", "2", "--subset", "256", "--seed", "3", "--lr", "0.05"]) == 130
    assert main([*common, "--resume", "--lr", "0.3"]) == 2
    assert "--lr saved 0.05 vs given 0.3" in capsys.readouterr().err
    assert main([*common, "--resume", "--seed", "0"]) == 2
    assert "--seed saved 3 vs given 0" in capsys.readouterr().err
    # Untyped options (seed 0, the recipe's epochs and batch size) leave the saved ones alone.
    assert main([*common, "--resume"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["config"]["seed"] == 3 and metrics["train_images"] == 256


def _stub_run(tmp_path) -> str:
    """A folder that passes for a run directory: the library call it would reach is faked."""
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "model.json").write_text("{}")
    return str(tmp_path / "x")


@pytest.mark.parametrize("drop,shown", [(0.1, "-0.10 points"), (-0.05, "+0.05 points"), (-0.001, "+0.00 points")])
def test_quant_prints_the_accuracy_change_with_its_sign(drop, shown, monkeypatch, capsys, tmp_path):
    """INT8 minus FP32, as report.md prints it: a fall is negative."""
    import cnndeploy.quant

    record = argparse.Namespace(file="model.int8-cpu.onnx", int8_accuracy=0.982, fp32_accuracy=0.983,
                                accuracy_drop_points=drop, int8_bytes=90_000, fp32_bytes=270_000)
    monkeypatch.setattr(cnndeploy.quant, "quantize_run", lambda *a, **k: record)
    assert main(["quant", _stub_run(tmp_path)]) == 0
    assert f"({shown} vs FP32's 98.30%)" in capsys.readouterr().out


@pytest.mark.parametrize("epochs,tail", [(1, "after 1 fine-tune epoch\n"), (2, "after 2 fine-tune epochs\n")])
def test_prune_prints_percentages_and_one_mac_format(epochs, tail, monkeypatch, capsys, tmp_path):
    import cnndeploy.train.prune

    record = argparse.Namespace(
        before={"macs": 436_000, "params": 61_706, "test_accuracy": 0.983},
        pruned_before_finetune={"macs": 160_000, "params": 30_000, "test_accuracy": 0.936},
        after_finetune={"macs": 160_000, "params": 30_000, "test_accuracy": 0.98}, macs_reduction=2.725,
        finetune_epochs=epochs)
    monkeypatch.setattr(cnndeploy.train.prune, "prune_run", lambda *a, **k: record)
    assert main(["prune", _stub_run(tmp_path), "--amount", "0.5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("MACs 0.44M -> 0.16M (2.73x fewer), params 0.062M -> 0.030M; ")
    assert "test accuracy 98.30% -> 93.60% pruned -> 98.00% " in out and out.endswith(tail)


def test_pipeline_help_says_its_default_models_take_over_an_hour(capsys):
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    assert "take over an hour on a 2-core CPU" in " ".join(capsys.readouterr().out.split())


@pytest.mark.slow
def test_reproduce_table1_sweep_trains_recipes_concurrently(mini_mnist, tmp_path):
    """--sweep starts one `cnndeploy train` process per recipe at once and names the best one."""
    proc = _run("benchmarks/reproduce_table1.py", "--smoke", "--pair", "lenet5:mnist", "--sweep", "base,ema",
                "--data-dir", str(mini_mnist), "--out", str(tmp_path), "--runs-dir", str(tmp_path / "runs"),
                timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads((tmp_path / "table1-smoke-sweep-lenet5-mnist.json").read_text())
    runs = {r["recipe"]: r for r in report["runs"]}
    assert set(runs) == {"base", "ema"} and not any(r.get("failed") for r in runs.values())
    assert report["sweep"]["winner"] == max(runs, key=lambda n: runs[n]["test_accuracy"])
    assert report["sweep"]["concurrent"] == 2 and report["sweep"]["threads_each"] == 1
    configs = {n: json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["config"] for n, r in runs.items()}
    assert configs["base"]["ema"] == 0.0 and configs["ema"]["ema"] == 0.999
    assert all(c["epochs"] == 1 and c["subset"] == 256 for c in configs.values())
    assert Path(runs["ema"]["log"]).read_text().strip()            # each process's output kept
    # concurrent: every run started before any of them ended
    assert max(r["started_after_s"] for r in runs.values()) < min(
        r["started_after_s"] + r["seconds"] for r in runs.values())
    md = (tmp_path / "table1-smoke-sweep-lenet5-mnist.md").read_text()
    assert "| ema | `--ema 0.999` | lenet5 | mnist |" in md and f"**{report['sweep']['winner']}**" in md


@pytest.mark.slow
def test_compression_accuracy_smoke_on_a_given_run(mini_mnist, tmp_path):
    """Both INT8 flavours, prune + fine-tune with and without --distill, pruned + INT8: each measured
    from its file; the given run directory is left as it was."""
    from cnndeploy.train.fit import TrainConfig, train

    run = tmp_path / "lenet"
    train(TrainConfig(model="lenet5", dataset="mnist", out=str(run), data_dir=str(mini_mnist), device="cpu",
                      epochs=1, subset=256, batch_size=64), progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    proc = _run("benchmarks/compression_accuracy.py", "--smoke", "--run", str(run), "--data-dir", str(mini_mnist),
                "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert before == {p.name: p.read_bytes() for p in run.iterdir()}
    result = json.loads((tmp_path / "out" / "compression-accuracy-lenet5-mnist-smoke.json").read_text())
    variants = {"fp32", "int8-cpu", "int8-trt", "pruned", "pruned int8-cpu", "pruned-distill",
                "pruned-distill int8-cpu"}
    assert set(result["accuracy"]) == variants and all(0 <= a <= 1 for a in result["accuracy"].values())
    assert result["finetune_epochs"] == {"pruned": 1, "pruned-distill": 1}
    distilled = json.loads((tmp_path / "work" / "lenet-pruned50-distill" / "prune.json").read_text())
    assert distilled["finetune_teacher"] and not json.loads(
        (tmp_path / "work" / "lenet-pruned50" / "prune.json").read_text())["finetune_teacher"]
    assert result["macs"]["pruned"] < result["macs"]["unpruned"]
    assert "| pruned-distill int8-cpu |" in (tmp_path / "out" / "compression-accuracy-lenet5-mnist-smoke.md").read_text()
