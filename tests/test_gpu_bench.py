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
