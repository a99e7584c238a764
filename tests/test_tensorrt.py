"""TensorRT: the missing-dependency path runs everywhere; engine tests need tensorrt and a GPU."""

import importlib.util
import json

import pytest
import torch

from cnndeploy.cli import main
from cnndeploy.export.tensorrt import ENGINE_RE, engine_name

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_GPU = torch.cuda.is_available()


def test_engine_names_carry_version_and_compute_capability():
    name = engine_name("int8", "10.9.0.34", (9, 0))
    assert name == "model.int8.trt10.9.0.34.sm90.engine"
    found = ENGINE_RE.search(name)
    assert (found["precision"], found["trt"], found["sm"]) == ("int8", "10.9.0.34", "90")


@pytest.mark.skipif(HAVE_TRT and HAVE_GPU, reason="TensorRT and a GPU are present")
def test_trt_without_tensorrt_or_gpu_is_one_line(tmp_path, capsys):
    (tmp_path / "model.json").write_text(json.dumps({}))
    assert main(["export", str(tmp_path), "--trt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert ("'tensorrt' Python package" in err) if not HAVE_TRT else ("CUDA GPU" in err)


@pytest.mark.skipif(HAVE_TRT and HAVE_GPU, reason="TensorRT and a GPU are present")
def test_eval_of_an_engine_without_tensorrt_is_one_line(tmp_path, capsys):
    (tmp_path / "model.fp32.trt10.0.0.sm90.engine").write_bytes(b"\0" * 64)
    assert main(["eval", str(tmp_path / "model.fp32.trt10.0.0.sm90.engine")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.fixture
def no_tensorrt_no_gpu(monkeypatch):
    """This machine as one without both, wherever the test runs."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` now raises ImportError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_everything_missing_for_tensorrt_is_named(no_tensorrt_no_gpu):
    from cnndeploy.runtime.tensorrt import TensorRTError, require_tensorrt, tensorrt_missing

    assert len(tensorrt_missing()) == 2
    with pytest.raises(TensorRTError) as info:
        require_tensorrt()
    assert "'tensorrt' Python package" in str(info.value) and "no CUDA GPU" in str(info.value)


def test_trt_alone_fails_before_any_work_naming_package_and_gpu(no_tensorrt_no_gpu, tmp_path, capsys):
    from test_reliability import tiny_run

    run = tiny_run(tmp_path)
    assert main(["export", str(run), "--trt", "--fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "'tensorrt' Python package" in err and "no CUDA GPU" in err
    assert not list(run.glob("*.onnx"))


def test_onnx_and_trt_write_the_onnx_file_and_skip_tensorrt_in_one_line(no_tensorrt_no_gpu, tmp_path,
                                                                       mini_mnist, capsys):
    from test_reliability import tiny_run

    run = tiny_run(tmp_path)
    assert main(["export", str(run), "--onnx", "--trt", "--data-dir", str(mini_mnist)]) == 0
    assert (run / "model.onnx").is_file()
    captured = capsys.readouterr()
    assert "model.onnx" in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("skipped --trt: ")
    assert "'tensorrt' Python package" in err and "no CUDA GPU" in err


def test_precision_flags_need_trt(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--onnx", "--fp16"]) == 2
    assert "add --trt" in capsys.readouterr().err


@pytest.mark.trt
@pytest.mark.skipif(not (HAVE_TRT and HAVE_GPU), reason="needs the tensorrt package and a CUDA GPU")
def test_fp32_engine_matches_onnx(mini_mnist, tmp_path):
    from test_export import make_run

    from cnndeploy.export import export_onnx
    from cnndeploy.export.tensorrt import TensorRTRunner, build_engine
    from cnndeploy.models.weights import load_run

    run = make_run(tmp_path, "resnet20", mini_mnist)
    export_onnx(run, data_dir=str(mini_mnist))
    engine = build_engine(run, precision="fp32")
    model, _ = load_run(run)
    x = torch.randn(5, 1, 28, 28)
    got = TensorRTRunner(engine)(x).cpu()
    torch.testing.assert_close(got, model(x).detach(), atol=1e-2, rtol=1e-2)


@pytest.mark.trt
@pytest.mark.skipif(not (HAVE_TRT and HAVE_GPU), reason="needs the tensorrt package and a CUDA GPU")
def test_engines_from_another_tensorrt_are_refused(tmp_path):
    from cnndeploy.errors import CnnDeployError
    from cnndeploy.export.tensorrt import TensorRTRunner

    stale = tmp_path / "model.fp32.trt1.0.0.sm10.engine"
    stale.write_bytes(b"\0" * 64)
    with pytest.raises(CnnDeployError, match="rebuild the engine"):
        TensorRTRunner(stale)
