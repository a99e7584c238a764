"""Hostile command-line values and hostile JSON records: one line and exit 2 (or carry on), never a traceback."""

import json
import shutil

import pytest

from cnndeploy.cli import main

DEEP = "[" * 100_000 + "]" * 100_000   # json.loads raises RecursionError on it


def _fails_in_one_line(capsys, argv, *needles) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("argv,needles", [
    (["train", "--model", "lenet5", "--dataset", "mnist", "--seed", str(2**64)], ["--seed", "2**64-1"]),
    (["train", "--model", "lenet5", "--dataset", "mnist", "--seed", "-1"], ["--seed"]),
    (["quant", "x", "--seed", str(2**70)], ["--seed"]),
    (["pipeline", "--dataset", "mnist", "--seed", str(2**64)], ["--seed"]),
    (["prune", "x", "--amount", "0.5", "--finetune-epochs", "0"], ["--finetune-epochs", "positive integer"]),
    (["prune", "x", "--amount", "0.5", "--finetune-epochs", "-3"], ["--finetune-epochs"]),
    (["pipeline", "--dataset", "mnist", "--finetune-epochs", "0"], ["--finetune-epochs"]),
    (["prune", "x", "--amount", "0.5", "--round-to", "-8"], ["--round-to"]),
    (["serve", "x", "--port", "99999"], ["--port", "[1, 65535]"]),
    (["serve", "x", "--port", "-1"], ["--port"]),
    (["bench", "x", "--min-seconds", "-1"], ["--min-seconds", "positive"]),
    (["bench", "x", "--min-seconds", "0"], ["--min-seconds"]),
    (["bench", "x", "--min-seconds", "inf"], ["--min-seconds"]),
    (["pipeline", "--dataset", "mnist", "--min-seconds", "-1"], ["--min-seconds"]),
    (["export", "x", "--onnx", "--opset", "-1"], ["--opset"]),
])
def test_bad_option_values_are_one_line_naming_the_option(argv, needles, capsys):
    _fails_in_one_line(capsys, argv, *needles)


def test_the_largest_seed_trains(mini_mnist, tmp_path):
    out = tmp_path / "big-seed"
    assert main(["train", "--model", "alexnet", "--dataset", "mnist", "--data-dir", str(mini_mnist), "--epochs", "1",
                 "--subset", "64", "--batch-size", "32", "--device", "cpu", "--seed", str(2**64 - 1), "--out", str(out),
                 "--no-progress"]) == 0   # alexnet: dropout draws from the per-epoch seed
    assert json.loads((out / "metrics.json").read_text())["config"]["seed"] == 2**64 - 1


def test_library_configs_refuse_the_same_values():
    from cnndeploy.bench.harness import BenchConfig
    from cnndeploy.errors import CnnDeployError
    from cnndeploy.pipeline import _check, pipeline_config
    from cnndeploy.train.prune import PruneConfig

    for kw in ({"finetune_epochs": 0}, {"finetune_epochs": -2}, {"round_to": -8}, {"finetune_epochs": True}):
        with pytest.raises(CnnDeployError, match="--finetune-epochs|--round-to"):
            PruneConfig(**kw).check()
    assert PruneConfig(round_to=0).check() and PruneConfig(finetune_epochs=1, round_to=None).check()
    for seconds in (0, -1, float("inf"), float("nan")):
        with pytest.raises(CnnDeployError, match="--min-seconds"):
            BenchConfig(min_seconds=seconds).check()
    for kw in ({"finetune_epochs": 0}, {"min_seconds": -1}):
        with pytest.raises(CnnDeployError):
            _check(pipeline_config(dataset="mnist", models=["lenet5"], **kw))


def test_export_refuses_an_opset_the_exporter_does_not_write(tmp_path, capsys):
    from cnndeploy.export.onnx_export import max_opset

    newest = max_opset()
    assert 20 <= newest < 99
    err = _exit_2(capsys, ["export", str(tmp_path), "--onnx", "--opset", "99"])
    assert f"--opset 99: expected 17 to {newest}" in err
    assert not list(tmp_path.iterdir())   # refused before anything was read or written


def _exit_2(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def trained(mini_mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "lenet5-mnist"
    assert main(["train", "--model", "lenet5", "--dataset", "mnist", "--data-dir", str(mini_mnist), "--epochs", "1",
                 "--subset", "256", "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    assert main(["export", str(out), "--onnx", "--data-dir", str(mini_mnist)]) == 0  # the demo serves ONNX files
    return out


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / trained.name
    shutil.copytree(trained, copy)
    return copy


@pytest.mark.parametrize("what", ["file", "under-a-file"])
def test_bench_and_pipeline_out_that_cannot_be_a_folder(what, run, mini_mnist, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    out = blocker if what == "file" else blocker / "bench"
    err = _exit_2(capsys, ["bench", str(run), "--backends", "torch", "--out", str(out), "--data-dir", str(mini_mnist),
                           "--no-progress"])
    assert str(out) in err
    err = _exit_2(capsys, ["pipeline", "--dataset", "mnist", "--models", "lenet5", "--out", str(out),
                           "--data-dir", str(mini_mnist), "--no-progress"])
    assert str(out) in err and blocker.read_text() == "keep me"


def test_bench_out_in_a_folder_that_refuses_writes(run, mini_mnist, tmp_path, capsys, monkeypatch):
    import cnndeploy.fileio

    # the tests run as root, whom chmod does not stop: the refusal is the answer os.access gives
    monkeypatch.setattr(cnndeploy.fileio.os, "access", lambda *a, **k: False)
    err = _exit_2(capsys, ["bench", str(run), "--backends", "torch", "--out", str(tmp_path / "ro"),
                           "--data-dir", str(mini_mnist), "--no-progress"])
    assert "not writable" in err


BAD = {"list": "[1, 2]", "deep": DEEP, "not json": "{oops"}


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("record,argv", [
    ("quant.json", ["quant", "{run}", "--data-dir", "{data}"]),
    ("metrics.json", ["prune", "{run}", "--amount", "0.5", "--data-dir", "{data}", "--no-progress"]),
    ("prune.json", ["bench", "{run}", "--backends", "torch", "--batch-sizes", "1", "--min-seconds", "0.01",
                    "--data-dir", "{data}", "--no-progress"]),
    ("metrics.json", ["pipeline", "--dataset", "mnist", "--models", "lenet5", "--out", "{parent}",
                      "--data-dir", "{data}", "--no-progress"]),
])
def test_malformed_records_are_one_line_naming_the_file(kind, record, argv, run, mini_mnist, capsys):
    (run / record).write_text(BAD[kind])
    before = sorted(p.name for p in run.iterdir())
    argv = [a.format(run=run, data=mini_mnist, parent=run.parent) for a in argv]
    err = _exit_2(capsys, argv)
    assert record in err
    assert sorted(p.name for p in run.iterdir()) == before    # refused before any work


@pytest.mark.parametrize("record,content,field", [
    ("prune.json", {"source_run": 5, "amount": "half"}, "source_run"),
    ("metrics.json", {"test_accuracy": "high", "config": {}}, "test_accuracy"),
    ("metrics.json", {"config": ["lr", 1]}, "config"),
    ("quant.json", {"model.int8-cpu.onnx": [1]}, "model.int8-cpu.onnx"),
    ("quant.json", {"model.int8-cpu.onnx": {"config": "x"}}, "config"),
])
def test_wrong_field_types_are_named(record, content, field, run):
    from cnndeploy.artifacts import records

    (run / record).write_text(json.dumps(content))
    reader = {"prune.json": records.PruneRecord.read, "metrics.json": records.read_metrics,
              "quant.json": records.read_quant}[record]
    with pytest.raises(records.RecordError, match=f"{record}.*'{field}'"):
        reader(run)


def test_absent_records_read_as_absent(tmp_path):
    from cnndeploy.artifacts import records

    assert records.read_metrics(tmp_path) == {} and records.read_quant(tmp_path) == {}
    assert records.PruneRecord.read(tmp_path) is None and records.read_bench(tmp_path)["rows"] == []


def test_bench_json_rows_outside_the_schema_are_dropped_and_a_bad_top_level_refused(tmp_path):
    from cnndeploy.artifacts import records

    good = {"variant": "a:fp32", "run": "a", "backend": "torch", "status": "ok", "batch_size": 1}
    (tmp_path / "bench.json").write_text(json.dumps({"rows": [good, {**good, "batch_size": "1"}, [], 3]}))
    assert [r.batch_size for r in records.read_bench(tmp_path)["rows"]] == [1]
    for bad in ({"rows": {}}, {"config": []}, [good]):
        (tmp_path / "bench.json").write_text(json.dumps(bad))
        with pytest.raises(records.RecordError, match="bench.json"):
            records.read_bench(tmp_path)


def _serve(monkeypatch, argv, capsys) -> tuple[int, str]:
    import cnndeploy.serve.app

    pytest.importorskip("gradio")
    monkeypatch.setattr(cnndeploy.serve.app, "launch", lambda *a, **k: "http://stub")
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize("kind", ["list", "deep"])
def test_serve_refuses_a_malformed_run_record_but_skips_a_malformed_bench(kind, run, trained, monkeypatch, capsys,
                                                                        caplog):
    (run / "metrics.json").write_text(BAD[kind])
    code, err = _serve(monkeypatch, ["serve", str(run)], capsys)
    assert code == 2 and "metrics.json" in err and len(err.strip().splitlines()) == 1

    shutil.copy(trained / "metrics.json", run / "metrics.json")
    (run / "bench").mkdir()
    (run / "bench" / "bench.json").write_text(BAD[kind])
    code, err = _serve(monkeypatch, ["serve", str(run)], capsys)
    assert code == 0 and "Benchmark tab skips it" in caplog.text  # the bench table is optional: the demo starts


@pytest.mark.parametrize("seed", [2**64, -1, True, 1.5, "7"])
def test_train_config_from_python_refuses_a_seed_torch_cannot_take(seed, tmp_path):
    from cnndeploy.errors import CnnDeployError
    from cnndeploy.quant import QuantConfig
    from cnndeploy.train.fit import TrainConfig

    with pytest.raises(CnnDeployError, match=r"seed .*: expected an integer in \[0, 2\*\*64-1\]"):
        TrainConfig(model="lenet5", dataset="mnist", out=str(tmp_path / "x"), seed=seed)
    with pytest.raises(CnnDeployError, match="--seed"):
        QuantConfig(seed=seed).check()
    assert not (tmp_path / "x").exists()
    assert TrainConfig(model="lenet5", dataset="mnist", out="x", seed=2**64 - 1).seed == 2**64 - 1


MEASURED = {"macs": 10, "params": 5, "test_accuracy": 0.9}
PRUNE_OK = {"source_run": "a", "amount": 0.5, "method": "l1", "round_to": None, "finetune_epochs": 1,
            "finetune_lr": 0.1, "finetune_precision": "auto", "finetune_teacher": None, "before": MEASURED,
            "pruned_before_finetune": MEASURED, "after_finetune": MEASURED, "macs_reduction": 2.0,
            "params_reduction": 2.0, "widths": {}, "config": {}}


@pytest.mark.parametrize("record,content,message", [
    ("prune.json", {**PRUNE_OK, "before": {**MEASURED, "test_accuracy": "high"}},
     "field 'before.test_accuracy' must be float, got a string"),
    ("prune.json", {**PRUNE_OK, "after_finetune": {"macs": 10, "params": 5}}, "field 'after_finetune.test_accuracy' is missing"),
    ("prune.json", {**PRUNE_OK, "pruned_before_finetune": [1, 2]},
     "field 'pruned_before_finetune' must be an object, got a list"),
    ("prune.json", {**PRUNE_OK, "before": {**MEASURED, "macs": True}}, "field 'before.macs' must be int, got a boolean"),
    ("quant.json", {"model.int8-cpu.onnx": {"config": {"calib_size": "all"}}},
     "entry 'model.int8-cpu.onnx': field 'config.calib_size' must be int, got a string"),
    ("metrics.json", {"config": {"data_dir": 5}}, "field 'config.data_dir' must be str | null, got an integer"),
    ("metrics.json", {"config": {"widths": {"features": "wide"}, "epochs": [3]}},
     "field 'config.epochs' must be int | null, got a list"),
    ("bench.json", {"environment": {"peak": {"cpu": {"fp32_gflops": "fast"}}}},
     "field 'environment.peak.cpu.fp32_gflops' must be float | null, got a string"),
    ("bench.json", {"environment": {"versions": {"torch": 2}}}, "field 'environment.versions.torch' must be str | null"),
    ("bench.json", {"runs": ["a", 3]}, "field 'runs[1]' must be str, got an integer"),
])
def test_nested_fields_of_records_are_checked_and_named_by_their_path(record, content, message, tmp_path):
    from cnndeploy.artifacts import records

    (tmp_path / record).write_text(json.dumps(content))
    reader = {"prune.json": records.PruneRecord.read, "metrics.json": records.read_metrics,
              "quant.json": records.read_quant, "bench.json": records.read_bench}[record]
    with pytest.raises(records.RecordError) as e:
        reader(tmp_path)
    assert str(tmp_path / record) in str(e.value) and message in str(e.value), str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_nested_records_as_the_writers_write_them_still_read(tmp_path):
    from cnndeploy.artifacts import records

    (tmp_path / "prune.json").write_text(json.dumps({**PRUNE_OK, "before": {**MEASURED, "test_accuracy": 1},
                                                     "newer_field": {"x": 1}}))
    assert records.PruneRecord.read(tmp_path).before["test_accuracy"] == 1
    env = {"cpu": "x", "cpu_flags": ["avx2"], "cores": 2, "threads": None, "gpu": None, "versions": {"torch": "2"},
           "git_commit": None, "peak": {"cpu": {"fp32_gflops": None, "basis": "CPU clock unknown"}, "gpu": None},
           "python": "3.11"}
    (tmp_path / "bench.json").write_text(json.dumps({"environment": env, "config": {}, "runs": ["a"], "rows": []}))
    assert records.read_bench(tmp_path)["environment"] == env
