"""Per-layer INT8 sensitivity and the float fallback of chosen nodes (quant/sensitivity.py, ptq.py)."""

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from cnndeploy.artifacts import files as layout
from cnndeploy.artifacts.card import ModelCard
from cnndeploy.data import load_dataset
from cnndeploy.data.types import normalise
from cnndeploy.errors import CnnDeployError
from cnndeploy.export import export_onnx
from cnndeploy.models import create_model, weights
from cnndeploy.quant.ptq import COMPUTE_OPS, prepare_float, quantize_file
from cnndeploy.quant.sensitivity import EXACT_DB, fallback_order, layer_sensitivity, output_sqnr_db
from cnndeploy.runtime.onnxruntime_import import onnxruntime


@pytest.fixture(scope="module")
def lenet(mini_mnist, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """An untrained (seeded) LeNet-5 exported to model.onnx, and 64 training images to calibrate on."""
    torch.set_num_threads(1)
    ds = load_dataset("mnist", data_dir=mini_mnist)
    torch.manual_seed(0)
    model = create_model("lenet5", ds.num_classes, ds.channels, ds.height, ds.width).eval()
    run = tmp_path_factory.mktemp("sens") / "lenet"
    run.mkdir()
    weights.save_weights(run / layout.WEIGHTS, model)
    (run / layout.MODEL_JSON).write_text(json.dumps(weights.card_for("lenet5", model, ds.metadata()).to_json()))
    fp32 = export_onnx(run, data_dir=str(mini_mnist))[0]
    card = ModelCard.read(run)
    return fp32, normalise(ds.train_x[:64], card.mean, card.std)


def _compute_nodes(path: Path) -> list[onnx.NodeProto]:
    return [n for n in onnx.load(str(path)).graph.node if n.op_type in COMPUTE_OPS]


@pytest.fixture(scope="module")
def crafted(lenet, tmp_path_factory) -> tuple[Path, str]:
    """The LeNet with one outlier tap in every filter of its second Conv: per-channel int8 weights
    then round that layer's other taps to a few levels, so it, not its neighbours, loses the SQNR."""
    fp32, _ = lenet
    model = onnx.load(str(fp32))
    conv = [n for n in model.graph.node if n.op_type == "Conv"][1]
    init = next(i for i in model.graph.initializer if i.name == conv.input[1])
    w = numpy_helper.to_array(init).copy()
    w[:, 0, 2, 2] = 40 * np.abs(w).max()
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    path = tmp_path_factory.mktemp("crafted") / "model.onnx"
    onnx.save(model, str(path))
    return path, conv.name


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_ranking_covers_every_compute_node_sorted_and_finite(lenet, tmp_path, target, monkeypatch):
    fp32, images = lenet
    prepared = prepare_float(fp32, tmp_path / "a.onnx")
    again = prepare_float(fp32, tmp_path / "b.onnx")
    names = [n.name for n in _compute_nodes(prepared)]
    assert names == [n.name for n in _compute_nodes(again)] and len(names) == 5   # 2 Conv + 3 Gemm
    int8 = tmp_path / "int8.onnx"
    quantize_file(fp32, int8, images, target=target, method="minmax")

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    errors = layer_sensitivity(fp32, int8, images, batch_size=24)   # 64 = 24 + 24 + 16: a ragged batch
    assert not any(scratch.iterdir()), "layer_sensitivity left files behind"

    assert sorted(e.node for e in errors) == sorted(names)
    assert {e.op_type for e in errors} == {"Conv", "Gemm"}
    for e in errors:
        assert all(math.isfinite(v) for v in (e.sqnr_db, e.input_sqnr_db, e.local_loss_db))
        assert 10 < e.sqnr_db < 80, e    # INT8 of a LeNet: tens of dB, neither exact nor noise
        assert e.local_loss_db == pytest.approx(e.input_sqnr_db - e.sqnr_db, abs=1e-3)
        assert set(e.as_dict()) == {"node", "op_type", "output", "sqnr_db", "input_sqnr_db", "local_loss_db"}
    losses = [e.local_loss_db for e in errors]
    assert losses == sorted(losses, reverse=True)
    assert fallback_order(errors) == [e.node for e in errors] == fallback_order(errors[::-1])
    # The last layer writes the logits: its SQNR is the file's output SQNR.
    last = next(e for e in errors if e.node == names[-1])
    assert last.output == "logits" and last.sqnr_db == pytest.approx(output_sqnr_db(fp32, int8, images), abs=1e-3)
    # The batch size changes how the images are fed, not the numbers.
    assert [e.sqnr_db for e in layer_sensitivity(fp32, int8, images)] == pytest.approx(
        [e.sqnr_db for e in errors], abs=1e-3)


def test_crafted_layer_ranks_first_and_falling_back_helps(crafted, lenet, tmp_path):
    path, sensitive = crafted
    _, images = lenet
    int8 = tmp_path / "int8.onnx"
    quantize_file(path, int8, images, target="cpu", method="minmax")
    errors = layer_sensitivity(path, int8, images)
    assert errors[0].node == sensitive and errors[0].local_loss_db > errors[1].local_loss_db + 3
    order = fallback_order(errors)
    measured = [output_sqnr_db(path, int8, images)]
    for k in (1, 2):
        out = tmp_path / f"int8-float{k}.onnx"
        quantize_file(path, out, images, target="cpu", method="minmax", nodes_to_exclude=order[:k])
        measured.append(output_sqnr_db(path, out, images))
    assert measured[1] > measured[0] + 3, measured   # the outlier layer in float: most of the error gone
    assert measured[2] >= measured[1] - 0.5, measured


def _weight_from_dq(path: Path) -> dict[str, bool]:
    """Compute node name -> is its weight input written by a DequantizeLinear?"""
    graph = onnx.load(str(path)).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name: n.input[1] in dq_outputs for n in graph.node if n.op_type in COMPUTE_OPS}


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_excluded_node_runs_in_float_and_the_file_runs(lenet, tmp_path, target):
    fp32, images = lenet
    names = [n.name for n in _compute_nodes(prepare_float(fp32, tmp_path / "prepared.onnx"))]
    keep = names[1]
    out = tmp_path / "int8.onnx"
    quantize_file(fp32, out, images, target=target, method="minmax", nodes_to_exclude=[keep])
    fed = _weight_from_dq(out)
    assert set(fed) == set(names)
    assert fed[keep] is False and all(fed[n] for n in names if n != keep)
    session = onnxruntime().InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": images[:3]})[0]
    assert logits.shape == (3, 10) and np.isfinite(logits).all()


def test_unknown_node_names_are_refused_before_quantizing(lenet, tmp_path):
    fp32, images = lenet
    out = tmp_path / "int8.onnx"
    with pytest.raises(CnnDeployError, match=r"no node named 'conv9'.*node_conv2d, node_conv2d_1, node_linear"):
        quantize_file(fp32, out, images, target="cpu", method="minmax",
                      nodes_to_exclude=["node_conv2d", "conv9"])
    assert list(tmp_path.iterdir()) == []   # no result, no temporary file beside it
    with pytest.raises(CnnDeployError, match="expected a list of node names"):
        quantize_file(fp32, out, images, target="cpu", method="minmax", nodes_to_exclude="node_conv2d")


def test_bad_inputs_to_the_ranking(lenet, crafted, tmp_path):
    fp32, images = lenet
    int8 = tmp_path / "int8.onnx"
    quantize_file(fp32, int8, images, target="cpu", method="minmax")
    with pytest.raises(CnnDeployError, match="float NCHW"):
        layer_sensitivity(fp32, int8, images[0])
    with pytest.raises(CnnDeployError, match="batch_size 0"):
        layer_sensitivity(fp32, int8, images, batch_size=0)
    other = onnx.load(str(int8))
    for node in other.graph.node:   # an INT8 file of some other graph
        node.name = "other_" + node.name
    onnx.save(other, str(tmp_path / "other.onnx"))
    with pytest.raises(CnnDeployError, match="does not match the float model: node.*node_conv2d"):
        layer_sensitivity(fp32, tmp_path / "other.onnx", images)


def test_an_all_zero_layer_ranks_last_with_finite_numbers(lenet, tmp_path):
    """An exact match (here an all-zero last layer, like a zero-initialised residual BatchNorm) is
    no 0 dB 'noise as large as the signal', which would rank it first."""
    fp32, images = lenet
    model = onnx.load(str(fp32))
    last = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    for init in model.graph.initializer:
        if init.name in last.input[1:]:
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
    zeroed, int8 = tmp_path / "zeroed.onnx", tmp_path / "int8.onnx"
    onnx.save(model, str(zeroed))
    quantize_file(zeroed, int8, images, target="cpu", method="minmax")
    errors = layer_sensitivity(zeroed, int8, images)
    assert errors[-1].node == last.name and errors[-1].sqnr_db == EXACT_DB
    assert all(math.isfinite(e.local_loss_db) for e in errors)
    assert output_sqnr_db(zeroed, int8, images) == EXACT_DB
