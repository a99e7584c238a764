"""Hostile ONNX files, model.json widths, weights files and checkpoints: one clear line each.

Every input is crafted here, tiny on disk; RELIABILITY.md maps each class to its test.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file

from cnndeploy.artifacts import files as layout
from cnndeploy.artifacts.card import MAX_SIDE
from cnndeploy.models import weights
from cnndeploy.runtime.classifier import Classifier, ModelFileError
from cnndeploy.train.checkpoint import FORMAT
from cnndeploy.train.fit import TrainConfig

from test_reliability import cli, memory_capped, tiny_onnx, tiny_run


def _onnx(path: Path, *, batch="N", out_shape=("N", 10), reshape: list[int] | None = None) -> Path:
    """input [batch, 1, 28, 28] -> Flatten -> MatMul -> [N, 10], optionally reshaped to `reshape`."""
    w = np.random.default_rng(0).standard_normal((28 * 28, 10)).astype(np.float32) * 0.01
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["mm" if reshape else "logits"])]
    inits = [numpy_helper.from_array(w, "W")]
    if reshape:
        nodes.append(helper.make_node("Reshape", ["mm", "shape"], ["logits"]))
        inits.append(numpy_helper.from_array(np.array(reshape, np.int64), "shape"))
    graph = helper.make_graph(
        nodes, "hostile", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(out_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"classes": json.dumps([str(i) for i in range(10)]), "channels": "1", "height": "28",
                       "width": "28", "mean": "[0.5]", "std": "[0.25]", "model": "tiny",
                       "dataset": "mnist"}.items():
        model.metadata_props.add(key=key, value=value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


# ---------------------------------------------------------------- ONNX: classes that are not a list

@pytest.mark.parametrize("classes", ['{"0": "a", "1": "b"}', '"0123456789"', '[1.5, 2.5]', '[["a"], ["b"]]'])
def test_classes_metadata_must_be_a_list_of_names(tmp_path, capsys, classes):
    path = tiny_onnx(tmp_path / "m.onnx", props={"classes": classes})
    with pytest.raises(ModelFileError, match="classes must be a list of class names"):
        Classifier(path)
    code, err = cli(capsys, "eval", str(path))
    assert code == 2 and "classes must be a list of class names" in err and str(path) in err


# ---------------------------------------------------------------- ONNX: a fixed batch of 1

def test_fixed_batch_of_one_runs_one_image_at_a_time(tmp_path, mini_mnist, capsys):
    fixed = Classifier(_onnx(tmp_path / "fixed.onnx", batch=1, out_shape=(1, 10)))
    free = Classifier(_onnx(tmp_path / "free.onnx"))
    assert fixed.runner.fixed_batch == 1 and free.runner.fixed_batch is None
    x = np.random.default_rng(1).standard_normal((5, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(fixed.logits(x), free.logits(x), rtol=1e-5, atol=1e-6)
    assert len(fixed.predict([np.zeros((28, 28), np.uint8)] * 3)) == 3
    code, err = cli(capsys, "eval", str(tmp_path / "fixed.onnx"), "--data-dir", str(mini_mnist), "--json")
    assert code == 0, err


def test_bench_runs_a_fixed_batch_model_through_the_same_checks(tmp_path):
    from cnndeploy.artifacts.variants import discover
    from cnndeploy.runtime.runners import make_runner

    run = tiny_run(tmp_path)
    _onnx(run / "model.onnx", batch=1, out_shape=(1, 10))
    variant = next(v for v in discover(run) if v.kind == "onnx")
    out = make_runner("ort", variant)(np.zeros((4, 1, 28, 28), np.float32))
    assert out.shape == (4, 10)


# ---------------------------------------------------------------- ONNX: outputs that are not [N, classes]

OUTPUTS = {  # declared output shape, Reshape target (-1 keeps the batch symbolic)
    "flat": (["M"], [-1]),
    "leading-one": ([1, "N", 10], [1, -1, 10]),
    "trailing-k": (["N", 5, 2], [-1, 5, 2]),
}


@pytest.mark.parametrize("case", OUTPUTS)
def test_output_not_n_by_classes_is_refused_at_load(tmp_path, capsys, case):
    declared, target = OUTPUTS[case]
    path = _onnx(tmp_path / f"{case}.onnx", out_shape=declared, reshape=target)
    expected = "expected [N, 10] (one row of logits per image)"
    with pytest.raises(ModelFileError, match=r"output is shaped .*expected \[N, 10\]"):
        Classifier(path)
    code, err = cli(capsys, "eval", str(path))
    assert code == 2 and expected in err and str(path) in err


@pytest.mark.parametrize("case", OUTPUTS)
def test_output_that_lies_about_its_shape_is_caught_after_the_run(tmp_path, case):
    """Metadata says [N, 10]; the graph returns something else: the first run says what it got."""
    _, target = OUTPUTS[case]
    clf = Classifier(_onnx(tmp_path / f"{case}.onnx", out_shape=("N", 10), reshape=target))
    with pytest.raises(ModelFileError, match=r"output for 2 image\(s\) is shaped \[.*\]; expected \[2, 10\]"):
        clf.logits(np.zeros((2, 1, 28, 28), np.float32))


def test_bench_row_of_a_wrong_output_is_the_clear_message(tmp_path):
    from cnndeploy.artifacts.variants import discover
    from cnndeploy.errors import CnnDeployError
    from cnndeploy.runtime.runners import make_runner

    run = tiny_run(tmp_path)
    _onnx(run / "model.onnx", out_shape=("N", 10), reshape=[1, -1, 10])
    variant = next(v for v in discover(run) if v.kind == "onnx")
    runner = make_runner("ort", variant)
    with pytest.raises(CnnDeployError, match=r"shaped \[1, 3, 10\]; expected \[3, 10\]") as info:
        runner(np.zeros((3, 1, 28, 28), np.float32))
    assert len(str(info.value).splitlines()) == 1


# ---------------------------------------------------------------- ONNX: absurd declared sizes

_LIMITED_CLASSIFY = memory_capped(512, probe=False) + """
from cnndeploy.runtime.classifier import Classifier, ModelFileError
import numpy as np
try:
    Classifier(sys.argv[1]).classify(np.zeros((28, 28), np.uint8))
    print('CLASSIFIED')
except ModelFileError as e:
    print('REFUSED', e)
"""


@pytest.mark.parametrize("side", ["height", "width"])
def test_absurd_declared_input_size_is_refused_under_a_memory_cap(tmp_path, side):
    path = tiny_onnx(tmp_path / "huge.onnx", props={side: "300000"})
    proc = subprocess.run([sys.executable, "-c", _LIMITED_CLASSIFY, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("REFUSED") and f"from 1 to {MAX_SIDE}" in proc.stdout, proc.stdout


# ---------------------------------------------------------------- model.json: absurd widths

ABSURD_WIDTHS = {
    "conv-10M": {"conv": [10_000_000, 16]},
    "fc-10M": {"fc": [10_000_000, 84]},
    "conv-in-1M": {"conv": [6, 1_000_000]},
}

_LIMITED_EVAL = memory_capped(768) + """
from cnndeploy.cli import main
for args in (['eval', sys.argv[1]], ['export', sys.argv[1], '--onnx']):
    print('EXIT', main(args))
"""


@pytest.mark.parametrize("case", ABSURD_WIDTHS)
def test_absurd_widths_are_refused_before_building_under_a_memory_cap(tmp_path, case):
    run = tiny_run(tmp_path)
    meta = json.loads((run / layout.MODEL_JSON).read_text())
    (run / layout.MODEL_JSON).write_text(json.dumps({**meta, "widths": {**meta["widths"],
                                                                          **ABSURD_WIDTHS[case]}}))
    proc = subprocess.run([sys.executable, "-c", _LIMITED_EVAL, str(run)], capture_output=True, text=True,
                          timeout=300)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert lines == ["LIMIT OK", "EXIT 2", "EXIT 2"], (lines, proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert all("far more than its weights file holds" in e and "refused before building it" in e
               for e in errors), errors


def test_ordinary_widths_still_build(tmp_path):
    model, card = weights.load_run(tiny_run(tmp_path))
    assert card.model == "lenet5" and sum(p.numel() for p in model.parameters()) > 0


# ---------------------------------------------------------------- safetensors: tens of thousands of keys

def test_many_unexpected_tensors_are_summarised(tmp_path, capsys):
    run = tiny_run(tmp_path)
    state, _ = weights.load_tensors(run / layout.WEIGHTS)
    state.update({f"junk.{i:05d}": torch.zeros(1) for i in range(20000)})
    save_file(state, str(run / layout.WEIGHTS))
    code, err = cli(capsys, "eval", str(run))
    assert code == 2 and "unexpected keys [junk.00000, junk.00001" in err and "(20000 in all)" in err
    assert len(err) < 1000, len(err)


# ---------------------------------------------------------------- checkpoints: malformed JSON state

def _checkpoint(out: Path, state) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = state if isinstance(state, str) else json.dumps(state)
    save_file({"model.x": torch.zeros(1)}, str(out / layout.CHECKPOINT),
              metadata={"format": FORMAT, "state": text})


def _good_state(out: Path) -> dict:
    cfg = TrainConfig(model="lenet5", dataset="mnist", out=str(out), epochs=2, batch_size=32, lr=0.05,
                      weight_decay=0.0, label_smoothing=0.0, warmup=0.0)
    return {"epoch": 1, "step": 10, "history": [], "seconds_in_epochs": 1.0, "config": dataclasses.asdict(cfg),
            "param_groups": [{"params": [0], "lr": 0.05}]}


BAD_STATES = {
    "nested-too-deep": (lambda s: "[" * 100000 + "]" * 100000, "nested too deep"),
    "not-an-object": (lambda s: [s], "expected a JSON object, got list"),
    "config-a-list": (lambda s: {**s, "config": [1, 2]}, "field 'config' must be an object"),
    "history-not-rows": (lambda s: {**s, "history": {"a": 1}}, "field 'history' must be a list of objects"),
    "epoch-a-string": (lambda s: {**s, "epoch": "1"}, "field 'epoch' must be a non-negative integer"),
    "param-groups-a-dict": (lambda s: {**s, "param_groups": {"params": []}}, "field 'param_groups'"),
    "data-a-string": (lambda s: {**s, "data": "mnist"}, "field 'data' must be an object"),
    "unknown-config-key": (lambda s: {**s, "config": {**s["config"], "evil": 1}},
                           "unknown config field 'evil'"),
    "config-lr-a-string": (lambda s: {**s, "config": {**s["config"], "lr": "fast"}},
                           "config field 'lr' must be float | None, got str"),
    "config-seed-a-bool": (lambda s: {**s, "config": {**s["config"], "seed": True}},
                           "config field 'seed' must be int, got bool"),
    "config-widths-a-list": (lambda s: {**s, "config": {**s["config"], "widths": [6, 16]}},
                             "config field 'widths' must be dict | None, got list"),
    "config-no-model": (lambda s: {**s, "config": {k: v for k, v in s["config"].items() if k != "model"}},
                        "config field 'model' is missing"),
}


@pytest.mark.parametrize("case", BAD_STATES)
def test_malformed_checkpoint_state_is_one_line_naming_the_field(tmp_path, capsys, case):
    out = tmp_path / "run"
    mutate, expected = BAD_STATES[case]
    _checkpoint(out, mutate(_good_state(out)))
    code, err = cli(capsys, "train", "--model", "lenet5", "--dataset", "mnist", "--out", str(out), "--resume")
    assert code == 2 and expected in err and str(out / layout.CHECKPOINT) in err, err
    assert "malformed checkpoint state" in err or "corrupt or incomplete" in err
