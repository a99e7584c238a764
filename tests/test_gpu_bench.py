"""benchmarks/gpu_bench.py: its --smoke run on CPU (so the GPU call is not the script's first run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "benchmarks" / "gpu_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_smoke_writes_json_md_plots_and_prints_the_table_last(tmp_path, capsys):
    result = _script().main(["--smoke", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu-bench-smoke-cpu.json").read_text())
    assert saved["rows"] == result["rows"] and saved["smoke"] is True and saved["left_out"] == []
    ok = [r for r in saved["rows"] if r["status"] == "ok"]
    # both runs (trained and 50%-pruned), both CPU backends, both batch sizes, FP16 ONNX among the files
    assert {r["run"] for r in ok} == {"lenet5-mnist", "lenet5-mnist-pruned50"}
    assert {r["backend"] for r in ok} == {"torch", "ort"} and {r["batch_size"] for r in ok} == {1, 8}
    assert {"fp32", "fp16", "int8-cpu"} <= {r["precision"] for r in ok}
    assert all(r["latency_ms_p50"] > 0 for r in ok)
    assert "## Fastest row per run and batch size" in (tmp_path / "gpu-bench-smoke-cpu.md").read_text()
    assert list((tmp_path / "gpu-bench-smoke-cpu").glob("*.png"))
    assert saved["empty_model"]["p50_ms"] > 0 and saved["empty_model"]["timed"] == "host arrays, CPU"
    assert saved["verdicts"] == ["no row of the targets' runs was measured"]   # batch 1024 and ResNet: GPU only
    last = capsys.readouterr().out.rstrip().splitlines()[-len(saved["table"]):]
    assert last == saved["table"] and len(last) == 1 + 2 * 2


def test_slug_names_the_gpu_file_safely():
    slug = _script().gpu_slug
    assert slug({"gpu": {"name": "NVIDIA H200"}}) == "nvidia-h200"
    assert slug({"gpu": None}) == "cpu"


def test_table_picks_the_fastest_ok_row():
    rows = [{"run": "r", "batch_size": 1, "status": "ok", "precision": p, "backend": "torch", "latency_ms_p50": ms,
             "throughput_ips": 1000 / ms, "peak_share": None} for p, ms in (("fp32", 2.0), ("fp16", 1.0))]
    rows.append({"run": "r", "batch_size": 1, "status": "skipped: no CUDA GPU", "precision": "bf16", "backend": "x"})
    lines = _script().table(rows)
    assert len(lines) == 2 and "fp16@torch" in lines[1] and "—" in lines[1]


def test_compile_guard_drops_torch_compile_only_past_half_the_time_left():
    guard = _script().compile_guard
    runs = ["lenet5-mnist", "lenet5-mnist-pruned50", "resnet18-cifar10", "resnet18-cifar10-pruned50"]
    backends = ["torch", "torch-compile", "ort-cuda"]
    assert guard(backends, runs, [1, 64, 1024], 400.0) == (backends, None)      # ~150 s of 400
    kept, why = guard(backends, runs, [1, 64, 1024], 200.0)
    assert kept == ["torch", "ort-cuda"] and "torch-compile" in why and "200 s left" in why
    assert guard(["torch"], runs, [1], 0.0) == (["torch"], None)


def _row(run, b, backend, precision, ips, **extra):
    return {"run": run, "batch_size": b, "backend": backend, "precision": precision, "status": "ok",
            "throughput_ips": ips, "latency_ms_p50": 1000 * b / ips, **extra}


def test_verdicts_judge_the_issue_targets_from_rows():
    res, pruned = "resnet18-cifar10", "resnet18-cifar10-pruned50"
    rows = [_row(res, 1024, "torch", "bf16", 120_000), _row(pruned, 1024, "torch", "bf16", 180_000),
            _row(res, 1, "torch", "fp32", 1_000), _row(res, 1, "torch-compile", "fp32", 5_000,
                                                         compile_mode="reduce-overhead"),
            _row("lenet5-mnist", 1024, "torch", "fp16", 2_000_000),
            {**_row(res, 1, "ort-cuda", "fp32", 9e9), "status": "skipped: onnxruntime has no CUDAExecutionProvider"}]
    v = _script().verdicts(rows)
    assert "120000 images/s (target 100000: met)" in v[0]
    assert "p50 0.2000 ms (target 0.25 ms: met)" in v[1] and "fp32@torch-compile" in v[1]
    assert "5.00x torch eager FP32 (target 3x: met)" in v[2] and "reduce-overhead" in v[2]
    assert "torch bf16, batch 1024: 1.50x (target 2x: NOT met: its narrower layers" in v[3]
    assert v[4].startswith("LeNet-5 batch 1024: fastest fp16@torch 2000000")
