import csv
import json

import pytest

from cnndeploy.cli import main
from cnndeploy.train.fit import TrainConfig, train


@pytest.fixture(scope="module")
def runs(mini_mnist, tmp_path_factory):
    """A trained LeNet with its ONNX and INT8 files, and a pruned child run."""
    root = tmp_path_factory.mktemp("bench")
    run = root / "lenet"
    train(TrainConfig(model="lenet5", dataset="mnist", out=str(run), data_dir=str(mini_mnist), epochs=1,
                      device="cpu"), progress=False)
    assert main(["quant", str(run), "--calib-size", "64", "--data-dir", str(mini_mnist)]) == 0  # exports too
    assert main(["prune", str(run), "--amount", "0.5", "--round-to", "0", "--finetune-epochs", "1",
                 "--data-dir", str(mini_mnist), "--no-progress"]) == 0
    return run, root / "lenet-pruned50"


def test_bench_writes_every_row_with_accuracy_latency_and_skips(runs, mini_mnist, tmp_path, capsys):
    import torch

    run, pruned = runs
    out = tmp_path / "bench"
    threads = torch.get_num_threads()
    assert main(["bench", str(run), str(pruned), "--backends", "torch,ort,ort-cuda,tensorrt",
                 "--batch-sizes", "1,8", "--min-seconds", "0.05", "--threads", "1", "--out", str(out),
                 "--data-dir", str(mini_mnist), "--no-progress"]) == 0
    assert torch.get_num_threads() == threads  # --threads 1 must not leak into the rest of the process
    report = json.loads((out / "bench.json").read_text())
    rows = report["rows"]
    assert report["environment"]["cores"] >= 1 and report["environment"]["versions"]["onnxruntime"]
    ok = [r for r in rows if r["status"] == "ok"]
    # lenet: torch fp32 + ort fp32 + ort int8-cpu; pruned (not exported): torch fp32; two batch sizes each
    assert len(ok) == 8
    for r in ok:
        assert 0.5 < r["accuracy"] <= 1 and r["latency_ms_p50"] > 0 and r["throughput_ips"] > 0
        assert r["latency_ms_p99"] >= r["latency_ms_p50"] and r["size_bytes"] > 0
    skipped = [r for r in rows if r["status"].startswith("skipped")]
    assert any("CUDAExecutionProvider" in r["status"] for r in skipped)
    assert any("no engine file" in r["status"] for r in skipped)  # tensorrt: nothing silently dropped
    assert any(r["variant"] == "lenet-pruned50:-" and "no onnx file" in r["status"] for r in skipped)
    int8 = next(r for r in ok if r["precision"] == "int8-cpu")
    onnx_fp32 = next(r for r in ok if r["variant"] == "lenet:fp32" and r["backend"] == "ort"
                     and r["batch_size"] == int8["batch_size"])
    # slower only beyond the noise the rounds measured (the larger spread of the two, at least the floor)
    ratio = int8["throughput_ips"] / onnx_fp32["throughput_ips"]
    assert int8["parent"] == "lenet:fp32" and int8["parent_backend"] == "ort"
    assert int8["speed_vs_parent"] == pytest.approx(ratio, abs=1e-4)
    assert int8["flag_tolerance"] == pytest.approx(max(0.02, int8["spread"], onnx_fp32["spread"]), abs=1e-4)
    assert int8["slower_than_parent"] == (ratio < 1 - int8["flag_tolerance"])
    assert any(r["variant"] == "lenet-pruned50:fp32" and r["slower_than_parent"] is not None for r in ok)
    assert report["config"]["rounds"] == 3 and all(r["spread"] is not None for r in ok)
    from cnndeploy.runtime.runners import on_gpu

    for r in ok:  # CPU memory is not measured (bench/memory.py); the CUDA allocator's peak is
        assert r["peak_mem_kind"] == "cuda" if on_gpu(r["backend"]) else r["peak_mem_mb"] is None
    peak = report["environment"]["peak"]["cpu"]
    assert peak["basis"].startswith("nominal: ") and "measured_ceiling_gflops" in peak
    with open(out / "bench.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and {"variant", "latency_ms_p50", "status"} <= set(table[0])
    md = (out / "bench.md").read_text()
    assert "| lenet:int8-cpu | ort |" in md
    assert "None" not in md and ":-" not in md and "skipped" not in md   # skips are one line per backend
    not_measured = md.split("Not measured:\n")[1].split("\n\n")[0].splitlines()
    assert sorted(line.split(":")[0] for line in not_measured) == ["- ort", "- ort-cuda", "- tensorrt"]
    for png in ("accuracy_vs_latency.png", "size.png", "throughput_vs_batch.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_pareto_front_keeps_only_undominated_points():
    from cnndeploy.bench.plots import pareto

    points = [(1.0, 90.0), (2.0, 95.0), (3.0, 94.0), (0.5, 80.0), (2.0, 91.0)]
    assert pareto(points) == [3, 0, 1]


def test_bench_rejects_unknown_backends_and_bad_batch_sizes(runs, capsys):
    run, _ = runs
    assert main(["bench", str(run), "--backends", "ort,tpu"]) == 2
    assert "unknown ['tpu']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", str(run), "--batch-sizes", "1,0"])
