"""`cnndeploy export --triton-repo`: checked against Triton's own schema, and run as declared.

No Triton server runs here (no container, no GPU). What is checked instead: every config.pbtxt
parses with protobuf's text_format into tritonclient's ModelConfig (the schema the server
uses), and every model file runs in onnxruntime with exactly the input names, data types and
dims its config declares, giving the declared outputs. The test re-parses the files itself
rather than trusting the writer's own checks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from cnndeploy.cli import main
from cnndeploy.export import triton
from cnndeploy.export.triton import MARKER, TritonError, TritonOptions, write_triton_repo
from cnndeploy.train.fit import TrainConfig, train

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] is in the dev extra")
from tritonclient.utils import triton_to_np_dtype  # noqa: E402

ENGINE = "model.fp16.trt10.3.0.sm90.engine"


@pytest.fixture(scope="module")
def exported_run(mini_mnist, tmp_path_factory) -> Path:
    """A LeNet-5 run directory with model.onnx and model.uint8.onnx (pixels in)."""
    run = tmp_path_factory.mktemp("runs") / "lenet5-mnist"
    train(TrainConfig(model="lenet5", dataset="mnist", out=str(run), data_dir=str(mini_mnist), device="cpu",
                      epochs=1, subset=256), progress=False)
    assert main(["-q", "export", str(run), "--onnx", "--with-preprocess", "--data-dir", str(mini_mnist)]) == 0
    return run


def _parse(model_dir: Path):
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _run_as_declared(config, onnx_path: Path, batch: int = 3) -> list[np.ndarray]:
    """onnxruntime fed exactly what the config declares: names, numpy types from Triton's, [batch] + dims."""
    def np_type(t):
        return np.dtype(triton_to_np_dtype(model_config_pb2.DataType.Name(t.data_type)[len("TYPE_"):]))

    feeds = {t.name: np.zeros([batch, *t.dims], dtype=np_type(t)) for t in config.input}
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outs = session.run([t.name for t in config.output], feeds)
    for t, value in zip(config.output, outs):
        assert value.dtype == np_type(t) and list(value.shape) == [batch, *t.dims]
    return outs


def test_repository_layout_schema_and_onnxruntime_run(exported_run, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["export", str(exported_run), "--triton-repo", str(repo), "--preferred-batch-sizes", "8,64"]) == 0
    assert "lenet5-mnist: onnxruntime_onnx" in capsys.readouterr().out
    assert sorted(p.name for p in repo.iterdir()) == [MARKER, "lenet5-mnist", "lenet5-mnist-uint8"]
    classes = json.loads((exported_run / "model.json").read_text())["classes"]
    for name, dtype, dims in [("lenet5-mnist", "TYPE_FP32", [1, 28, 28]),
                              ("lenet5-mnist-uint8", "TYPE_UINT8", [28, 28, 1])]:
        folder = repo / name
        assert sorted(p.name for p in folder.rglob("*")) == ["1", "config.pbtxt", "labels.txt", "model.onnx"]
        config = _parse(folder)
        assert config.name == name and config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
        assert config.max_batch_size == 256
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 64]
        assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
        (inp,), (out,) = config.input, config.output
        assert (inp.name, model_config_pb2.DataType.Name(inp.data_type), list(inp.dims)) == ("input", dtype, dims)
        assert (out.name, list(out.dims), out.label_filename) == ("logits", [10], "labels.txt")
        assert (folder / "labels.txt").read_text().splitlines() == classes
        (logits,) = _run_as_declared(config, folder / "1" / "model.onnx")
        assert np.isfinite(logits).all()
    # the exported file is the one that was validated against PyTorch, byte for byte
    assert (repo / "lenet5-mnist" / "1" / "model.onnx").read_bytes() == (exported_run / "model.onnx").read_bytes()


def test_tensorrt_plans_and_gpu_instances(exported_run, tmp_path):
    """An engine becomes a tensorrt_plan model on GPU; its I/O comes from the ONNX file it was built from."""
    run = tmp_path / "lenet5-mnist"
    shutil.copytree(exported_run, run)
    (run / ENGINE).write_bytes(b"\0" * 4096)  # no TensorRT here: a stand-in the writer only copies
    repo = tmp_path / "repo"
    written = write_triton_repo([run], repo, options=TritonOptions(max_batch_size=512, instance_kind="gpu",
                                                                   instance_count=2))
    assert {m["model"] for m in written} == {"lenet5-mnist", "lenet5-mnist-uint8", "lenet5-mnist-trt-fp16"}
    plan = _parse(repo / "lenet5-mnist-trt-fp16")
    assert (plan.platform, plan.backend, plan.default_model_filename) == ("tensorrt_plan", "tensorrt", "model.plan")
    assert plan.max_batch_size == 256                     # the engine's optimisation profile ends there
    assert (repo / "lenet5-mnist-trt-fp16" / "1" / "model.plan").read_bytes() == (run / ENGINE).read_bytes()
    _run_as_declared(plan, run / "model.onnx")
    onnx_model = _parse(repo / "lenet5-mnist")
    assert onnx_model.max_batch_size == 512
    assert [(g.kind, g.count) for g in onnx_model.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)]


def test_reexport_replaces_models_and_foreign_folders_are_refused(exported_run, tmp_path, capsys):
    repo = tmp_path / "repo"
    write_triton_repo([exported_run], repo)
    (repo / "lenet5-mnist" / "config.pbtxt").write_text("stale")
    write_triton_repo([exported_run], repo)
    _parse(repo / "lenet5-mnist")
    assert sorted(p.name for p in repo.iterdir()) == [MARKER, "lenet5-mnist", "lenet5-mnist-uint8"]
    assert not list(tmp_path.glob(".repo.*"))             # no scratch folder left beside it

    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "resnet50").mkdir()
    assert main(["export", str(exported_run), "--triton-repo", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty and was not written by cnndeploy" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["resnet50"]


def test_a_run_without_model_onnx_says_how_to_export_it(exported_run, tmp_path, capsys):
    run = tmp_path / "lenet5-mnist"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("*.onnx"))
    assert main(["export", str(run), "--triton-repo", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and f"cnndeploy export {run} --onnx" in err
    assert not (tmp_path / "repo").exists()               # refused before anything was written


def test_a_config_that_breaks_the_schema_leaves_no_model_folder(exported_run, tmp_path, monkeypatch):
    real = triton.config_text
    monkeypatch.setattr(triton, "config_text", lambda *a, **k: real(*a, **k).replace("KIND_CPU", "KIND_TPU"))
    with pytest.raises(TritonError, match="ModelConfig schema"):
        write_triton_repo([exported_run], tmp_path / "repo")
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [MARKER]
    assert not list(tmp_path.glob(".repo.*"))


def test_two_runs_with_one_name_are_refused(exported_run, tmp_path):
    twin = tmp_path / "other" / exported_run.name
    shutil.copytree(exported_run, twin)
    with pytest.raises(TritonError, match="both become the Triton model 'lenet5-mnist'"):
        write_triton_repo([exported_run, twin], tmp_path / "repo")


def test_the_readme_client_request_fits_the_declared_input(exported_run, tmp_path):
    """What README's tritonclient snippet sends (uint8 NHWC pixels) is what the -uint8 model declares."""
    import tritonclient.grpc as grpcclient

    write_triton_repo([exported_run], tmp_path / "repo")
    (inp,) = _parse(tmp_path / "repo" / "lenet5-mnist-uint8").input
    batch = np.zeros((28, 28), dtype=np.uint8)[None, :, :, None]          # as in the README
    request = grpcclient.InferInput(inp.name, list(batch.shape), "UINT8")
    request.set_data_from_numpy(batch)                                      # raises on a dtype mismatch
    assert model_config_pb2.DataType.Name(inp.data_type) == "TYPE_" + request.datatype()
    assert list(batch.shape[1:]) == list(inp.dims) and request.name() == inp.name
