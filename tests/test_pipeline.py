"""`cnndeploy pipeline`: every stage once, the report, and make-like resumption after interruptions."""

import importlib.util
import json
import shutil

import pytest

from cnndeploy.cli import main
from cnndeploy.pipeline import parse_epochs, pipeline_config, run_pipeline
from cnndeploy.errors import CnnDeployError


def _config(out, data, **kw):
    # the options of the `done` fixture's command line, so a call with no changes changes nothing
    options = {"epochs": 1, "batch_sizes": [1, 8], "min_seconds": 0.05, "threads": 1, "device": "cpu",
               "distill": True, **kw}
    return pipeline_config(dataset="mnist", models=["lenet5"], out=str(out), data_dir=str(data), **options)


def _statuses(out):
    return {s["stage"]: s["status"] for s in json.loads((out / "pipeline.json").read_text())["stages"]}


@pytest.fixture(scope="module")
def done(mini_mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    assert main(["pipeline", "--dataset", "mnist", "--models", "lenet5", "--epochs", "1", "--batch-sizes", "1,8",
                 "--min-seconds", "0.05", "--threads", "1", "--device", "cpu", "--out", str(out),
                 "--distill", "--data-dir", str(mini_mnist), "--no-progress"]) == 0
    return out


def test_the_pipeline_folder_lists_its_runs_for_commands_given_it(done):
    from cnndeploy.artifacts.variants import expand_run_dirs

    runs = [done / "lenet5-mnist", done / "lenet5-mnist-pruned50"]
    assert json.loads((done / "pipeline.json").read_text())["runs"] == [r.name for r in runs]
    assert expand_run_dirs([done]) == runs


def test_pipeline_runs_every_stage_and_writes_the_report(done):
    run, pruned = done / "lenet5-mnist", done / "lenet5-mnist-pruned50"
    for path in (run / "model.onnx", run / "model.fp16.onnx", run / "model.int8-cpu.onnx", run / "model.int8-trt.onnx",
                 pruned / "prune.json", pruned / "model.int8-cpu.onnx", done / "bench" / "bench.json"):
        assert path.is_file(), path
    statuses = _statuses(done)
    assert statuses["lenet5: train"] == "ran" and statuses["bench"] == "ran"
    assert json.loads((pruned / "prune.json").read_text())["finetune_teacher"] == str(run.resolve())
    trt = [s for name, s in statuses.items() if "TensorRT" in name]
    assert trt and all(s.startswith("skipped: ") or s == "ran" for s in trt)
    report = (done / "report.md").read_text()
    assert "| lenet5 (LeNet) | mnist | 99.110% |" in report          # the paper's cell beside ours
    assert "not comparable with the paper" in report                 # 2,000-image test subset, said so
    assert "not comparable (subset)" in report and "not beaten" not in report
    assert "JPEG" not in report                                      # no CIFAR-10 run in this report
    # speed over the FP32 parent on the same backend, eager PyTorch kept as the second figure
    assert "× parent @ 1 | × parent @ 8 | × FP32 eager @ 1 | × FP32 eager @ 8 |" in report
    assert "3 interleaved rounds" in report and "thresholds used" in report
    bench_md = (done / "bench" / "bench.md").read_text()
    assert "None" not in bench_md and ":-" not in bench_md and "| skipped" not in bench_md
    assert "| pruned 50% INT8 (cpu) | ort |" in report and "| FP32 | torch |" in report
    assert "| FP16 | ort |" in report and "| pruned 50% FP16 | ort |" in report
    if importlib.util.find_spec("openvino"):  # a default backend of the pipeline, where installed
        assert "| INT8 (cpu) | openvino |" in report and "| FP32 | openvino |" in report
    assert "## 3. Environment" in report and "bench/accuracy_vs_latency.png" in report
    rows = json.loads((done / "bench" / "bench.json").read_text())["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["variant"].split(":")[0] for r in ok} == {"lenet5-mnist", "lenet5-mnist-pruned50"}
    # cost and utilisation columns: the pruned model has fewer MACs, shares are real fractions
    macs = {r["variant"].split(":")[0]: r["macs"] for r in ok}
    assert 0 < macs["lenet5-mnist-pruned50"] < macs["lenet5-mnist"]
    assert all(0 < r["peak_share"] < 1 for r in ok if r["peak_share"] is not None)
    assert any(r["peak_share"] is not None for r in ok)


def test_a_second_call_skips_complete_stages_and_redoes_interrupted_ones(done, mini_mnist):
    run, pruned = done / "lenet5-mnist", done / "lenet5-mnist-pruned50"
    weights = (run / "model.safetensors").read_bytes()
    (run / "model.int8-cpu.onnx").unlink()             # a quant stage that never finished
    (pruned / "prune.json").unlink()                   # a fine-tune killed before its report
    run_pipeline(_config(done, mini_mnist), progress=False)
    statuses = _statuses(done)
    assert statuses["lenet5: train"] == "complete already"
    assert statuses["lenet5: export ONNX"] == "complete already"
    assert statuses["lenet5: INT8 (cpu)"] == "ran" and statuses["lenet5: prune 50% + fine-tune"] == "ran"
    assert statuses["bench"] == "ran"
    assert (run / "model.safetensors").read_bytes() == weights   # a finished run is never retrained
    assert (pruned / "prune.json").is_file() and (run / "model.int8-cpu.onnx").is_file()
    run_pipeline(_config(done, mini_mnist), progress=False)
    assert all(s == "complete already" or s.startswith("skipped: ") for s in _statuses(done).values())


def test_an_interrupted_training_run_is_resumed(mini_mnist, tmp_path):
    from cnndeploy.train.fit import TrainConfig, train

    run = tmp_path / "lenet5-mnist"
    train(TrainConfig(model="lenet5", dataset="mnist", out=str(run), epochs=1, device="cpu",
                      data_dir=str(mini_mnist)), progress=False)
    (run / "metrics.json").unlink()                    # killed after the last checkpoint, before metrics
    cfg = _config(tmp_path, mini_mnist, prune=0.0, backends=["ort"])
    run_pipeline(cfg, progress=False)
    assert _statuses(tmp_path)["lenet5: train"] == "ran"
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1


@pytest.mark.parametrize("args, message", [
    (["--models", "lenet5,vgg"], "unknown ['vgg']"),
    (["--prune", "1.5"], "expected a fraction of channels in [0, 1)"),
    (["--epochs", "lenet5=x"], "expected N or model=N pairs"),
    (["--backends", "torch,cuda-magic"], "unknown ['cuda-magic']"),
])
def test_bad_pipeline_arguments_fail_with_one_clear_line(args, message, tmp_path, capsys):
    assert main(["pipeline", "--dataset", "mnist", "--out", str(tmp_path / "p"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()


def test_a_finished_run_with_other_epochs_is_refused_not_overwritten(done, mini_mnist, tmp_path):
    copy = tmp_path / "p"
    shutil.copytree(done / "lenet5-mnist", copy / "lenet5-mnist")
    before = (copy / "lenet5-mnist" / "model.safetensors").read_bytes()
    with pytest.raises(CnnDeployError, match="trained for 1 epochs, not the 3 asked for"):
        run_pipeline(pipeline_config(dataset="mnist", models=["lenet5"], out=str(copy), epochs=3,
                                    data_dir=str(mini_mnist)), progress=False)
    assert (copy / "lenet5-mnist" / "model.safetensors").read_bytes() == before


def test_epochs_parse_for_all_or_per_model():
    assert parse_epochs("4", ["lenet5", "alexnet"]) == {"lenet5": 4, "alexnet": 4}
    assert parse_epochs("alexnet=2", ["lenet5", "alexnet"]) == {"lenet5": None, "alexnet": 2}
    with pytest.raises(CnnDeployError):
        parse_epochs("resnet18=2", ["lenet5"])


def test_an_unknown_precision_is_refused_before_any_stage(mini_mnist, tmp_path):
    with pytest.raises(CnnDeployError, match="precision 'fp16': expected one of auto, fp32, bf16"):
        run_pipeline(_config(tmp_path / "p", mini_mnist, precision="fp16"))
    assert not (tmp_path / "p").exists()


def _bench(out):
    return json.loads((out / "bench" / "bench.json").read_text())


def test_changed_options_rerun_the_stages_they_feed_and_the_report_shows_the_new_rows(done, mini_mnist, tmp_path):
    out = tmp_path / "p"
    shutil.copytree(done, out)
    # The same options as the fixture's call: nothing runs.
    run_pipeline(_config(out, mini_mnist), progress=False)
    assert all(s == "complete already" or s.startswith("skipped: ") for s in _statuses(out).values())

    run_pipeline(_config(out, mini_mnist, batch_sizes=[1, 4]), progress=False)
    statuses = _statuses(out)
    assert statuses["bench"] == "ran" and statuses["lenet5: prune 50% + fine-tune"] == "complete already"
    assert {r["batch_size"] for r in _bench(out)["rows"] if r["status"] == "ok"} == {1, 4}
    assert "images/s @ batch 4" in (out / "report.md").read_text()
    assert json.loads((out / "pipeline.json").read_text())["config"]["bench"]["batch_sizes"] == [1, 4]

    run_pipeline(_config(out, mini_mnist, batch_sizes=[1, 4], backends=["ort"]), progress=False)
    assert _statuses(out)["bench"] == "ran"
    assert {r["backend"] for r in _bench(out)["rows"]} == {"ort"}
    assert "| FP32 | torch |" not in (out / "report.md").read_text()

    pruned = out / "lenet5-mnist-pruned50"
    before = (pruned / "model.safetensors").read_bytes()
    run_pipeline(_config(out, mini_mnist, distill=False, finetune_epochs=2, batch_sizes=[1, 4], backends=["ort"]),
                 progress=False)
    statuses = _statuses(out)
    assert statuses["lenet5: train"] == "complete already"
    assert statuses["lenet5: prune 50% + fine-tune"] == "ran"
    assert statuses["lenet5 pruned: export ONNX"] == "ran" and statuses["lenet5 pruned: INT8 (cpu)"] == "ran"
    assert statuses["bench"] == "ran"
    record = json.loads((pruned / "prune.json").read_text())
    assert record["finetune_teacher"] is None and record["finetune_epochs"] == 2
    assert record["config"]["distill"] is False and (pruned / "model.safetensors").read_bytes() != before

    weights = (out / "lenet5-mnist" / "model.safetensors").read_bytes()
    with pytest.raises(CnnDeployError, match=r"trained with other options \(precision 'auto', asked 'bf16'\)"):
        run_pipeline(_config(out, mini_mnist, precision="bf16"), progress=False)
    assert (out / "lenet5-mnist" / "model.safetensors").read_bytes() == weights


def test_a_quant_made_with_other_options_is_made_again(done, mini_mnist, tmp_path):
    from cnndeploy.quant import QuantConfig, quantize_run

    out = tmp_path / "p"
    shutil.copytree(done, out)
    run = out / "lenet5-mnist"
    quantize_run(run, QuantConfig(target="cpu", calib_size=16), data_dir=str(mini_mnist))  # by hand, other options
    run_pipeline(_config(out, mini_mnist), progress=False)
    statuses = _statuses(out)
    assert statuses["lenet5: INT8 (cpu)"] == "ran" and statuses["lenet5: INT8 (tensorrt)"] == "complete already"
    assert json.loads((run / "quant.json").read_text())["model.int8-cpu.onnx"]["calib_size"] == 512


def test_a_bench_killed_before_its_tables_and_plots_is_run_again(done, mini_mnist, tmp_path):
    bench = done / "bench"
    # bench.json is the marker of a finished bench: written after every other file of it
    others = [p for p in bench.iterdir() if p.name != "bench.json"]
    assert {"bench.csv", "bench.md"} <= {p.name for p in others}
    assert all(p.stat().st_mtime_ns <= (bench / "bench.json").stat().st_mtime_ns for p in others)

    out = tmp_path / "p"
    shutil.copytree(done, out)
    (out / "bench" / "bench.md").unlink()          # a kill after bench.json, as an older version wrote it first
    run_pipeline(_config(out, mini_mnist), progress=False)
    statuses = _statuses(out)
    assert statuses["bench"] == "ran" and statuses["lenet5: train"] == "complete already"
    assert (out / "bench" / "bench.md").is_file() and (out / "bench" / "bench.csv").is_file()
