"""The openvino backend: the same files as onnxruntime, the same logits within a stated tolerance,
honest precision labels (f32 hint, bf16 only where the CPU has it, int8 kernels for QDQ files),
--threads honoured, compiled models cached, and a skipped row saying how to install it."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.files import ONNX, spec
from cnndeploy.artifacts.variants import Variant, discover
from cnndeploy.cli import main
from cnndeploy.train.fit import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="openvino is not installed: pip install 'cnndeploy[openvino]' "
                                           "(the dev extra has it)")
FP32_ATOL = 1e-4          # same file, same f32 arithmetic: only summation order differs
INT8_ATOL_SHARE = 0.05    # INT8: 5% of the largest |logit| (rounding of requantised activations differs)
NO_BF16 = {"flags": "fpu avx2 fma avx512f avx512_vnni"}
WITH_BF16 = {"flags": "fpu avx2 fma avx512f avx512_vnni avx512_bf16"}


@pytest.fixture(scope="module")
def run(mini_mnist, tmp_path_factory) -> Path:
    """LeNet-5, one epoch on 2,048 shipped images (well above chance), exported and INT8-quantized."""
    run = tmp_path_factory.mktemp("openvino") / "lenet5-mnist"
    train(TrainConfig(model="lenet5", dataset="mnist", out=str(run), data_dir=str(mini_mnist), device="cpu",
                      epochs=1, subset=2048), progress=False)
    assert main(["-q", "export", str(run), "--onnx", "--data-dir", str(mini_mnist)]) == 0
    assert main(["-q", "quant", str(run), "--target", "cpu", "--calib-size", "128", "--data-dir", str(mini_mnist)]) == 0
    return run


@pytest.fixture(scope="module")
def images(run, mini_mnist) -> np.ndarray:
    """512 real MNIST test images, normalised as the run says."""
    from cnndeploy.data import dataset_for
    from cnndeploy.data.types import normalise

    card = ModelCard.read(run)
    return normalise(dataset_for(card, data_dir=str(mini_mnist)).test_x[:512], card.mean, card.std)


def _cpu(monkeypatch, fields: dict) -> None:
    """Simulate the CPU's capability check: every bf16 decision reads /proc/cpuinfo through this."""
    monkeypatch.setattr("cnndeploy.system.cpuinfo_fields", lambda text=None: fields)


def test_without_openvino_the_row_is_skipped_with_the_install_command(run, monkeypatch):
    from cnndeploy.runtime import runners

    real = importlib.util.find_spec
    monkeypatch.setattr(runners.importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    reason = runners.skip_reason("openvino", Variant(run, spec(ONNX)))
    assert reason == "openvino is not installed (pip install 'cnndeploy[openvino]')"
    assert runners.skip_reason("openvino", discover(run)[0]) == "openvino runs onnx files, not weights"


@needs_openvino
@pytest.mark.parametrize("file", ["model.onnx", "model.int8-cpu.onnx"])
def test_logits_match_onnxruntime_on_real_test_images(run, images, file):
    from cnndeploy.runtime.runners import make_runner

    variant = next(v for v in discover(run) if v.spec.name == file)
    ort, ov = make_runner("ort", variant)(images), make_runner("openvino", variant)(images)
    assert ov.shape == ort.shape == (512, 10)
    atol = FP32_ATOL if variant.precision == "fp32" else INT8_ATOL_SHARE * float(np.abs(ort).max())
    assert float(np.abs(ov - ort).max()) <= atol, f"{file}: max |diff| over atol {atol:.2g}"
    assert (ov.argmax(1) == ort.argmax(1)).mean() >= (1.0 if variant.precision == "fp32" else 0.98)


@needs_openvino
def test_precision_is_what_ran_f32_for_fp32_files_int8_kernels_for_qdq(run):
    from cnndeploy.runtime.runners import make_runner

    fp32, int8 = (next(v for v in discover(run) if v.spec.name == f) for f in ("model.onnx", "model.int8-cpu.onnx"))
    # f32 even on this bf16-capable CPU, where OpenVINO's default would be bf16
    assert make_runner("openvino", fp32).row_details(1)["compute_precision"] == "f32"
    assert make_runner("openvino", fp32).session.dynamic.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    assert make_runner("openvino", int8).row_details(1)["compute_precision"] == "u8"


@needs_openvino
def test_bf16_row_only_where_the_cpu_has_bf16(run, monkeypatch, tmp_path, mini_mnist):
    from cnndeploy import system
    from cnndeploy.artifacts.records import read_bench
    from cnndeploy.bench.harness import BenchConfig, run_bench
    from cnndeploy.runtime.runners import backend_variants

    fp32 = Variant(run, spec(ONNX))
    _cpu(monkeypatch, NO_BF16)
    assert backend_variants("openvino", fp32) == [fp32]
    rows = run_bench([run], BenchConfig(backends=["openvino"], batch_sizes=[1], min_seconds=0.01, rounds=1),
                     out=tmp_path, data_dir=str(mini_mnist), progress=False)
    assert {r.precision for r in rows} == {"fp32", "int8-cpu"} and all(r.status == "ok" for r in rows)
    assert all(r.compute_precision in ("f32", "u8") and r.load_seconds is not None for r in rows)
    env = read_bench(tmp_path)["environment"]
    assert env["bf16_isa"] is None and env["openvino_build"] and env["versions"]["openvino"]
    md = (tmp_path / "bench.md").read_text()
    assert "no native bf16, so no bf16 rows" in md and f"(build {env['openvino_build']})" in md
    assert "| lenet5-mnist:int8-cpu | openvino | 1 | u8 (" in md     # what ran, and the batch shape chosen

    _cpu(monkeypatch, WITH_BF16)
    bf16 = backend_variants("openvino", fp32)[1]
    assert bf16.path == run / ONNX and bf16.name == "lenet5-mnist:bf16" and bf16.spec.label == "BF16 compute of FP32"
    assert system.cpu_bf16_isa() == "avx512_bf16"
    _cpu(monkeypatch, {"flags": WITH_BF16["flags"] + " amx_bf16"})
    assert system.cpu_bf16_isa() == "amx_bf16"      # the environment record names the better of the two
    assert backend_variants("ort", fp32) == [fp32]   # only OpenVINO offers it


@needs_openvino
def test_bf16_row_computes_in_bf16_and_is_labelled_as_the_fp32_file(run, monkeypatch, tmp_path, mini_mnist):
    from cnndeploy import system
    from cnndeploy.bench.harness import BenchConfig, run_bench

    if not system.cpu_has_bf16():
        pytest.skip("this CPU has neither AVX512-BF16 nor AMX: OpenVINO would emulate bf16")
    rows = run_bench([run], BenchConfig(backends=["openvino"], batch_sizes=[4], min_seconds=0.01, rounds=2),
                     out=tmp_path, data_dir=str(mini_mnist), progress=False)
    bf16, = (r for r in rows if r.precision == "bf16")
    fp32, = (r for r in rows if r.precision == "fp32")
    assert bf16.file == "model.onnx" and bf16.compute_precision == "bf16" and bf16.status == "ok"
    assert bf16.parent == fp32.variant and bf16.speed_vs_parent is not None   # bf16 over fp32, same backend
    assert abs(bf16.accuracy - fp32.accuracy) <= 0.01
    assert "lenet5-mnist:bf16 (BF16 compute of FP32, model.onnx)" in (tmp_path / "bench.md").read_text()


@needs_openvino
def test_threads_flag_reaches_inference_num_threads(run, tmp_path, mini_mnist):
    from cnndeploy.runtime import openvino

    openvino.clear_cache()
    assert main(["-q", "bench", str(run), "--backends", "openvino", "--threads", "1", "--batch-sizes", "2",
                 "--min-seconds", "0.01", "--out", str(tmp_path), "--data-dir", str(mini_mnist)]) == 0
    compiled = list(openvino._cache.items())
    assert compiled and all(key[-1] == 1 for key, _ in compiled)           # (file, ..., threads)
    assert {m.get_property("INFERENCE_NUM_THREADS") for _, m in compiled} == {1}


@needs_openvino
def test_a_second_runner_on_the_same_file_reuses_the_compiled_model(run):
    from cnndeploy.runtime import openvino
    from cnndeploy.runtime.runners import make_runner

    openvino.clear_cache()
    variant = Variant(run, spec(ONNX))
    first = make_runner("openvino", variant, threads=2)
    assert openvino.cache_stats == {"compiles": 1}
    second = make_runner("openvino", variant, threads=2)
    assert second.session.dynamic is first.session.dynamic and openvino.cache_stats["hits"] == 1
    make_runner("openvino", variant, threads=1)            # other threads: a compile of its own
    assert openvino.cache_stats["compiles"] == 2


@needs_openvino
def test_static_or_dynamic_batch_is_measured_and_recorded(run, images):
    from cnndeploy.runtime.runners import make_runner

    runner = make_runner("openvino", Variant(run, spec(ONNX)))
    assert runner.row_details(3)["batch_shape"] == "dynamic"
    shapes = runner.prepare([1, 8])
    assert set(shapes) == {1, 8} and set(shapes.values()) <= {"static", "dynamic"}
    assert runner.row_details(8)["batch_shape"] == shapes[8]
    np.testing.assert_allclose(runner(images[:8]), runner(images[:9])[:8], atol=FP32_ATOL)  # both shapes agree


@needs_openvino
def test_classifier_on_openvino_gives_the_same_top1_as_the_default(run):
    from cnndeploy.runtime.classifier import Classifier

    pictures = sorted((REPO / "src/cnndeploy/serve/examples/mnist").glob("*.png"))
    default, ov = Classifier(run / ONNX), Classifier(run / ONNX, backend="openvino", threads=1)
    assert ov.classes == default.classes and ov.meta["height"] == 28
    assert [p[0][0] for p in ov.predict(pictures)] == [p[0][0] for p in default.predict(pictures)]


def test_classifier_refuses_an_unknown_backend_in_one_line(run):
    from cnndeploy.errors import CnnDeployError
    from cnndeploy.runtime.classifier import Classifier

    with pytest.raises(CnnDeployError, match="expected one of onnxruntime, openvino"):
        Classifier(run / ONNX, backend="tflite")
    with pytest.raises(CnnDeployError, match="only the openvino backend"):
        Classifier(run / ONNX, precision="bf16")
    with pytest.raises(CnnDeployError, match="pass one of them, not both"):
        Classifier(run / ONNX, backend="openvino", providers=["CUDAExecutionProvider"])


@needs_openvino
@pytest.mark.slow
def test_the_benchmark_script_smoke_mode_writes_ratios_with_their_spread(tmp_path):
    import importlib.util as iu

    from cnndeploy import system

    loader = iu.spec_from_file_location("openvino_cpu", REPO / "benchmarks" / "openvino_cpu.py")
    script = iu.module_from_spec(loader)
    loader.loader.exec_module(script)
    result = script.main(["--smoke", "--out", str(tmp_path)])
    assert (tmp_path / "openvino-cpu-smoke.json").is_file() and (tmp_path / "openvino-cpu-smoke.md").is_file()
    rows = result["rows"]
    assert {r["backend"] for r in rows} == {"torch", "ort", "openvino"} and all(r["status"] == "ok" for r in rows)
    assert all(r["accuracy"] is not None and len(r["round_throughputs"]) == 2 for r in rows)
    one = result["ratios"]["lenet5-mnist batch 1"]
    assert one["best_over_ort_int8"]["spread"] >= 0 and len(one["best_over_ort_int8"]["rounds"]) == 2
    assert any(v.startswith("lenet5-mnist batch 1: fastest is ") for v in result["verdicts"])
    agreement = result["agreement"]["lenet5-mnist"]
    assert agreement["fp32@openvino"] >= 0.99 and ("bf16@openvino" in agreement) == system.cpu_has_bf16()


@needs_openvino
def test_a_file_openvino_cannot_read_is_one_line_and_a_failed_row(run, tmp_path, capfd):
    from cnndeploy.runtime.classifier import Classifier, ModelFileError

    page = tmp_path / "model.onnx"
    page.write_text("<html><body>404</body></html>")
    with pytest.raises(ModelFileError, match="is not a model OpenVINO can read") as e:
        Classifier(page, backend="openvino")
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
    # only the ONNX reader saw it: Core.read_model would have tried TensorFlow's and others' on it too
    assert "GraphDef" not in capfd.readouterr().err
    broken = tmp_path / "broken"              # a run directory whose model.onnx is not a model
    broken.mkdir()
    (broken / "model.json").write_bytes((run / "model.json").read_bytes())
    (broken / "model.onnx").write_bytes(b"\x08\x07garbage")
    from cnndeploy.bench.harness import BenchConfig, run_bench

    rows = run_bench([broken], BenchConfig(backends=["openvino"], batch_sizes=[1], min_seconds=0.01, rounds=1),
                     out=tmp_path / "b", data_dir=str(REPO / "data" / "mnist-mini"), progress=False)
    failed = [r for r in rows if r.backend == "openvino"]
    assert failed and all(r.status.startswith("failed: ") and "OpenVINO can read" in r.status for r in failed)


@needs_openvino
def test_the_openvino_classifier_is_torch_free_and_says_how_to_install_openvino(run):
    import subprocess
    import sys

    probe = ("import sys\nsys.modules['torch'] = None  # importing torch now fails\n"
             "from cnndeploy.runtime import Classifier\n"
             f"c = Classifier({str(run / ONNX)!r}, backend='openvino')\n"
             "print(c.classify(__import__('numpy').zeros((28, 28), 'uint8'))[0][0])\n"
             "sys.modules['openvino'] = None\n"
             "try:\n    Classifier('absent.onnx', backend='openvino')\n"
             "except Exception as e:\n    print(type(e).__name__, e)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr
    label, missing = proc.stdout.strip().splitlines()
    assert label in [str(i) for i in range(10)]
    assert missing == ("OpenVINOMissing this needs openvino, which is not installed: "
                       "pip install 'cnndeploy[openvino]'")
