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
