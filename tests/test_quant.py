import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cnndeploy.cli import main
from cnndeploy.errors import CnnDeployError
from cnndeploy.quant import QuantConfig, quantize_run
from cnndeploy.train.fit import TrainConfig, train


@pytest.fixture(scope="module")
def trained(mini_mnist, tmp_path_factory) -> Path:
    """LeNet-5, 3 epochs on the shipped subset, exported to ONNX."""
    run = tmp_path_factory.mktemp("quant") / "lenet"
    train(TrainConfig(model="lenet5", dataset="mnist", out=str(run), data_dir=str(mini_mnist), epochs=3,
                      device="cpu"), progress=False)
    assert main(["export", str(run), "--onnx", "--data-dir", str(mini_mnist)]) == 0
    return run


def _zero_points(path: Path, op: str) -> list[np.ndarray]:
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == op]
    assert nodes, f"{path.name} has no {op} nodes"
    return [inits[n.input[2]] for n in nodes if len(n.input) > 2]


@pytest.mark.parametrize("target,file", [("cpu", "model.int8-cpu.onnx"), ("tensorrt", "model.int8-trt.onnx")])
def test_quantized_lenet_stays_within_one_point(trained, mini_mnist, target, file):
    report = quantize_run(trained, QuantConfig(target=target, calib_size=256), data_dir=str(mini_mnist))
    assert report["file"] == file and (trained / file).is_file()
    assert report["accuracy_drop_points"] <= 1.0 and report["int8_accuracy"] > 0.9
    assert report["int8_bytes"] < report["fp32_bytes"]
    saved = json.loads((trained / "quant.json").read_text())
    assert saved[file]["calib_seed"] == 0 and saved[file]["calib_size"] == 256
    quant_zps = _zero_points(trained / file, "QuantizeLinear")
    dequant_zps = _zero_points(trained / file, "DequantizeLinear")
    if target == "cpu":  # uint8 activations, int8 symmetric weights
        assert all(zp.dtype == np.uint8 for zp in quant_zps)
        assert any(zp.dtype == np.int8 and zp.ndim == 1 and zp.size > 1 for zp in dequant_zps)  # per-channel
    else:                # symmetric int8 everywhere, zero point 0
        assert all(zp.dtype == np.int8 and not zp.any() for zp in quant_zps + dequant_zps)


def test_quant_cli_and_bad_arguments(trained, mini_mnist, tmp_path, capsys, monkeypatch):
    assert main(["quant", str(trained), "--calib-size", "64", "--method", "percentile",
                 "--data-dir", str(mini_mnist)]) == 0
    assert "model.int8-cpu.onnx: test accuracy" in capsys.readouterr().out
    with pytest.raises(CnnDeployError, match="--target"):
        quantize_run(trained, QuantConfig(target="gpu"))
    meta = json.loads((trained / "model.json").read_text())
    del meta["dataset_path"]   # else quant finds the images where training read them
    (tmp_path / "model.json").write_text(json.dumps(meta))
    monkeypatch.delenv("CNNDEPLOY_DATA", raising=False)
    code = main(["quant", str(tmp_path), "--data-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    # No calibration data: one clear error, no dummy ranges, no file.
    assert code == 2 and "not found" in err and not (tmp_path / "model.int8-cpu.onnx").exists()
    assert "dataset 'mnist' not found" in err


def test_fp32_accuracy_is_reused_only_for_the_same_file_and_test_images(trained, mini_mnist, tmp_path,
                                                                         monkeypatch):
    import shutil

    import cnndeploy.runtime.evaluate as evaluate_module

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "quant.json").unlink(missing_ok=True)
    evaluated: list[str] = []
    real = evaluate_module.evaluate_onnx
    monkeypatch.setattr(evaluate_module, "evaluate_onnx",
                        lambda path, **kw: evaluated.append(Path(path).name) or real(path, **kw))
    first = quantize_run(run, QuantConfig(target="cpu", calib_size=64), data_dir=str(mini_mnist))
    second = quantize_run(run, QuantConfig(target="tensorrt", calib_size=64), data_dir=str(mini_mnist))
    assert evaluated == ["model.onnx", "model.int8-cpu.onnx", "model.int8-trt.onnx"]
    assert second["fp32_accuracy"] == first["fp32_accuracy"]
    assert second["fp32_sha256"] == first["fp32_sha256"] and len(first["test_set_sha256"]) == 64
    # A changed model.onnx (re-exported, say) is measured again.
    model = onnx.load(str(run / "model.onnx"))
    model.doc_string = "re-exported"
    onnx.save(model, str(run / "model.onnx"))
    quantize_run(run, QuantConfig(target="cpu", calib_size=64), data_dir=str(mini_mnist))
    assert evaluated[3:] == ["model.onnx", "model.int8-cpu.onnx"]


@pytest.mark.parametrize("recorded", ["0.99", 7.5, True, None])
def test_an_implausible_recorded_fp32_accuracy_is_measured_again(recorded):
    from cnndeploy.quant.ptq import _measured_before

    identity = {"fp32_sha256": "a" * 64, "test_set_sha256": "b" * 64}
    assert _measured_before({"x.onnx": {**identity, "fp32_accuracy": recorded}}, identity) is None
    assert _measured_before({"x.onnx": {**identity, "fp32_accuracy": 0.5}}, identity) == 0.5
    assert _measured_before({"x.onnx": {**identity, "fp32_sha256": "c", "fp32_accuracy": 0.5}}, identity) is None


def _int8_weights(path: Path) -> list[np.ndarray]:
    graph = onnx.load(str(path)).graph
    dequantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return [numpy_helper.to_array(i) for i in graph.initializer
            if i.name in dequantized and i.data_type == onnx.TensorProto.INT8]


@pytest.mark.parametrize("saturates", ["1", "0"])
def test_cpu_weights_are_7_bit_exactly_where_the_cpu_saturates(trained, mini_mnist, tmp_path, monkeypatch, saturates):
    """x86 without VNNI overflows int16 pair sums of u8 x s8: the cpu flavour gets 7-bit weights there
    (recorded), full range elsewhere; --reduce-range overrides the detection either way."""
    import shutil

    monkeypatch.setenv("CNNDEPLOY_INT8_SATURATES", saturates)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for name in ("quant.json", "model.int8-cpu.onnx", "model.int8-trt.onnx"):
        (run / name).unlink(missing_ok=True)
    quantize_run(run, QuantConfig(target="cpu", calib_size=128), data_dir=str(mini_mnist))
    widest = max(int(np.abs(w.astype(np.int16)).max()) for w in _int8_weights(run / "model.int8-cpu.onnx"))
    recorded = json.loads((run / "quant.json").read_text())["model.int8-cpu.onnx"]["config"]["reduce_range"]
    assert recorded is (saturates == "1")
    assert widest <= 64 if saturates == "1" else widest == 127   # per-channel symmetric: each channel's max is 127
    forced = "off" if saturates == "1" else "on"
    assert main(["quant", str(run), "--target", "cpu", "--calib-size", "128", "--reduce-range", forced,
                 "--data-dir", str(mini_mnist)]) == 0
    widest = max(int(np.abs(w.astype(np.int16)).max()) for w in _int8_weights(run / "model.int8-cpu.onnx"))
    assert widest == (127 if forced == "off" else 64)


def test_full_range_int8_runs_unfused_where_it_would_overflow(trained, mini_mnist, tmp_path, monkeypatch, caplog):
    """A full-range file on a saturating CPU gets basic optimizations only (no fusion into onnxruntime's
    integer kernels): its logits are those of its QDQ graph evaluated as written."""
    import onnxruntime as ort

    from cnndeploy.runtime import int8_cpu
    from cnndeploy.runtime.classifier import Classifier

    monkeypatch.setenv("CNNDEPLOY_INT8_SATURATES", "0")
    quantize_run(trained, QuantConfig(target="tensorrt", calib_size=128), data_dir=str(mini_mnist))
    path = trained / "model.int8-trt.onnx"
    assert not int8_cpu.overflows_here(path)   # a VNNI (or Arm, or GPU) machine: nothing to do
    monkeypatch.setenv("CNNDEPLOY_INT8_SATURATES", "1")
    assert int8_cpu.overflows_here(path) and not int8_cpu.overflows_here(trained / "model.onnx")
    from cnndeploy.artifacts.card import ModelCard
    from cnndeploy.data import dataset_for
    from cnndeploy.data.types import normalise

    card = ModelCard.read(trained)
    x = normalise(dataset_for(card, data_dir=str(mini_mnist)).test_x[:256], card.mean, card.std)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    as_written = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with caplog.at_level("WARNING", logger="cnndeploy"):
        got = Classifier(path).logits(x)
    assert "overflow this CPU's 8-bit kernels" in caplog.text
    # as written up to a rounding tie of the quantized logits (one step: 0.5-1% of the largest)
    assert float(np.abs(got - as_written).max()) <= 0.02 * float(np.abs(as_written).max())
    assert (got.argmax(1) == as_written.argmax(1)).mean() >= 0.99
    assert int8_cpu.faithful(ort.SessionOptions(), path, ["CUDAExecutionProvider"]) is False
    # the verdict is kept per file version: a file rewritten in place with 7-bit weights is judged again
    quantize_run(trained, QuantConfig(target="tensorrt", calib_size=128, reduce_range=True), data_dir=str(mini_mnist))
    assert not int8_cpu.overflows_here(path)
