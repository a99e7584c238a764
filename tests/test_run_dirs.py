"""RUN_DIR... arguments: a folder of run directories (a pipeline's output) stands for the runs it
holds, and `bench` writes under the first run directory by default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnndeploy.artifacts import files as layout
from cnndeploy.artifacts.variants import expand_run_dirs
from cnndeploy.cli import main
from cnndeploy.errors import CheckpointError


def fake_runs(root: Path, *names: str, pipeline: list[str] | None = None) -> list[Path]:
    """Folders that look like run directories to expand_run_dirs (a model.json each)."""
    runs = []
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / layout.MODEL_JSON).write_text("{}")
        runs.append(root / name)
    if pipeline is not None:
        (root / layout.PIPELINE).write_text(json.dumps({"runs": pipeline}))
    return runs


def test_a_run_directory_stays_itself(tmp_path):
    run, = fake_runs(tmp_path, "lenet5-mnist")
    assert expand_run_dirs([run]) == [run]


def test_a_pipeline_folder_becomes_its_runs_in_its_order(tmp_path):
    out = tmp_path / "quickstart"
    fake_runs(out, "lenet5-mnist", "lenet5-mnist-pruned50", "alexnet-mnist", "stray",
              pipeline=["lenet5-mnist", "lenet5-mnist-pruned50", "alexnet-mnist", "gone"])
    (out / layout.BENCH_DIR).mkdir()   # no model.json: not a run
    assert expand_run_dirs([out]) == [out / "lenet5-mnist", out / "lenet5-mnist-pruned50",
                                      out / "alexnet-mnist", out / "stray"]


def test_a_folder_of_runs_without_pipeline_json_is_sorted_and_duplicates_go(tmp_path):
    b, a = fake_runs(tmp_path / "runs", "b", "a")
    assert expand_run_dirs([tmp_path / "runs"]) == [a, b]
    assert expand_run_dirs([b, tmp_path / "runs"]) == [b, a]


def test_a_folder_with_no_runs_says_what_was_expected(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(CheckpointError) as info:
        expand_run_dirs([tmp_path / "empty"])
    message = str(info.value)
    assert f"model.json not found in {tmp_path / 'empty'}" in message
    assert "'cnndeploy train'" in message and "'cnndeploy pipeline'" in message
    with pytest.raises(CheckpointError, match="run directory not found"):
        expand_run_dirs([tmp_path / "nope"])


def test_commands_taking_run_dirs_expand_a_pipeline_folder(tmp_path, monkeypatch, capsys):
    import cnndeploy.serve.app as app

    out = tmp_path / "p"
    runs = fake_runs(out, "lenet5-mnist", "lenet5-mnist-pruned50",
                     pipeline=["lenet5-mnist", "lenet5-mnist-pruned50"])
    served = []
    monkeypatch.setattr(app, "serve", lambda run_dirs, **kw: served.append(run_dirs))
    assert main(["serve", str(out)]) == 0
    assert served == [[str(r) for r in runs]]
    # --out names one file: with the folder's two runs, export refuses before any work
    assert main(["export", str(out), "--onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "give one RUN_DIR" in capsys.readouterr().err
    # commands that take one run name the ones the folder holds
    assert main(["quant", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"holds 2: {runs[0]}, {runs[1]}" in err and "'cnndeploy quant' takes one of them" in err


@pytest.mark.slow
def test_bench_and_eval_of_a_pipeline_folder(tmp_path, mini_mnist, monkeypatch, capsys):
    """`bench` without --out writes into the first run directory, where the demo looks."""
    import torch

    from cnndeploy.models import create_model
    from cnndeploy.models import weights
    from cnndeploy.data import load_dataset

    monkeypatch.delenv("CNNDEPLOY_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    meta = load_dataset("mnist", data_dir=mini_mnist)
    out = tmp_path / "p"
    for i, name in enumerate(["b-run", "a-run"]):   # pipeline order, not the sorted one
        torch.manual_seed(i)
        model = create_model("lenet5", 10, 1, 28, 28)
        (out / name).mkdir(parents=True)
        weights.save_weights(out / name / layout.WEIGHTS, model)
        card = weights.card_for("lenet5", model, meta.metadata(), dataset_path=str(meta.path))
        (out / name / layout.MODEL_JSON).write_text(json.dumps(card.to_json()))
    (out / layout.PIPELINE).write_text(json.dumps({"runs": ["b-run", "a-run"]}))
    assert main(["bench", str(out), "--backends", "torch", "--batch-sizes", "1", "--min-seconds", "0.01",
                 "--no-progress"]) == 0
    assert f"-> {out / 'b-run' / 'bench'}/bench.md" in capsys.readouterr().out
    assert (out / "b-run" / "bench" / "bench.json").is_file() and not (tmp_path / "bench").exists()
    assert main(["eval", str(out), "--device", "cpu", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["run_dir"] for r in results] == [str(out / "b-run"), str(out / "a-run")]
