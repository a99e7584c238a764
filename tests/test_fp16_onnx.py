"""model.fp16.onnx, a file kind added through the artifacts table: export validates it, and bench,
the demo's lineup and the Triton repository pick it up from the table alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from cnndeploy.cli import main
from cnndeploy.train.fit import TrainConfig, train


@pytest.fixture(scope="module")
def run(mini_mnist, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("fp16") / "lenet5-mnist"
    train(TrainConfig(model="lenet5", dataset="mnist", out=str(run), data_dir=str(mini_mnist), device="cpu",
                      epochs=1, subset=512), progress=False)
    assert main(["-q", "export", str(run), "--onnx", "--fp16-onnx", "--data-dir", str(mini_mnist)]) == 0
    return run


def test_the_fp16_file_computes_in_fp16_behind_a_float32_interface(run, capsys):
    model = onnx.load(str(run / "model.fp16.onnx"))
    weights = [t for t in model.graph.initializer if len(t.dims) > 1]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    io = [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)]
    assert io == [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["compute_precision"] == "fp16" and json.loads(meta["classes"]) == [str(i) for i in range(10)]
    assert (run / "model.fp16.onnx").stat().st_size < 0.6 * (run / "model.onnx").stat().st_size


def test_export_reports_the_fp16_tolerance_and_refuses_it_without_onnx(run, mini_mnist, capsys):
    from cnndeploy.export import export_onnx
    from cnndeploy.export.onnx_export import FP16_ATOL, FP16_RTOL

    _, report = export_onnx(run, data_dir=str(mini_mnist), fp16=True)
    fp16 = report["fp16"]
    assert 0 < fp16["max_abs_diff"] and fp16["tolerance"] == f"atol {FP16_ATOL} + rtol {FP16_RTOL} x max|logit|"
    assert fp16["top1_agreement"] >= 0.85 and report["max_abs_diff"] < fp16["max_abs_diff"]
    assert main(["export", str(run), "--fp16-onnx"]) == 2
    assert "add --onnx" in capsys.readouterr().err


def test_bench_rows_and_the_demo_lineup_include_it(run, mini_mnist, tmp_path):
    from cnndeploy.bench.harness import BenchConfig, run_bench
    from cnndeploy.serve.lineup import classify, load_groups

    rows = run_bench([run], BenchConfig(backends=["ort"], batch_sizes=[1], min_seconds=0.02), out=tmp_path,
                     data_dir=str(mini_mnist), progress=False)
    fp16 = [r for r in rows if r["file"] == "model.fp16.onnx"]
    fp32 = [r for r in rows if r["file"] == "model.onnx"]
    assert len(fp16) == 1 and fp16[0]["status"] == "ok" and fp16[0]["precision"] == "fp16"
    assert abs(fp16[0]["accuracy"] - fp32[0]["accuracy"]) <= 0.01   # 2,000 test images: at most 20 differ
    group, = load_groups([run])
    digit = Image.fromarray(np.zeros((28, 28), np.uint8))
    _, answers = classify(group, digit)
    assert answers["lenet5-mnist:fp16@ort"]["compared_with"] == "lenet5-mnist:fp32@ort"


def test_the_triton_repository_serves_it(run, tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is in the dev extra")
    from cnndeploy.export.triton import write_triton_repo

    written = {m["model"]: m for m in write_triton_repo([run], tmp_path / "repo")}
    assert "lenet5-mnist-fp16" in written
    config = (tmp_path / "repo" / "lenet5-mnist-fp16" / "config.pbtxt").read_text()
    assert "TYPE_FP32" in config and (tmp_path / "repo" / "lenet5-mnist-fp16" / "1" / "model.onnx").is_file()
