import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from cnndeploy.artifacts import files as layout
from cnndeploy.models import weights
from cnndeploy.cli import main
from cnndeploy.data import load_dataset
from cnndeploy.errors import CnnDeployError
from cnndeploy.export import export_onnx, onnx_export
from cnndeploy.runtime.evaluate import evaluate_onnx
from cnndeploy.models import create_model, list_models
from cnndeploy.serve.runtime import Classifier, ImageInputError, ModelFileError
from cnndeploy.runtime.evaluate import evaluate_run

REPO = Path(__file__).resolve().parents[1]


def make_run(root: Path, name: str, data_dir: Path, dataset: str = "mnist") -> Path:
    """An untrained run directory (weights + model.json) for `name` on `dataset`."""
    ds = load_dataset(dataset, data_dir=data_dir)
    torch.manual_seed(0)
    model = create_model(name, ds.num_classes, ds.channels, ds.height, ds.width).eval()
    with torch.no_grad():  # non-trivial BN statistics, so the export must carry them
        model.train()(torch.randn(8, ds.channels, ds.height, ds.width))
    run = root / f"{name}-{dataset}"
    run.mkdir(parents=True)
    weights.save_weights(run / layout.WEIGHTS, model)
    (run / layout.MODEL_JSON).write_text(json.dumps(weights.card_for(name, model, ds.metadata()).to_json()))
    return run


@pytest.fixture(scope="module")
def exported(mini_mnist, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    return {name: export_onnx(make_run(root, name, mini_mnist), data_dir=str(mini_mnist))[0]
            for name in list_models()}


@pytest.mark.parametrize("name", ["lenet5", "alexnet", "resnet18", "resnet20", "resnet56"])
def test_export_round_trip_for_every_model(exported, name, mini_mnist):
    path = exported[name]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == [str(i) for i in range(10)]
    assert (props["channels"], props["height"], props["width"]) == ("1", "28", "28")
    assert json.loads(props["mean"]) == [0.1307] and json.loads(props["std"]) == [0.3081]
    assert props["model"] == name and props["dataset"] == "mnist"
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    # The file answers like the PyTorch model at a batch size it was never validated on.
    model, _ = weights.load_run(path.parent)
    x = np.random.default_rng(0).standard_normal((13, 1, 28, 28)).astype(np.float32)
    ours = Classifier(path).logits(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_export_of_a_cifar_model(shared_data, tmp_path):
    path, report = export_onnx(make_run(tmp_path, "resnet20", shared_data, "cifar10"), data_dir=str(shared_data))
    assert report["top1_agreement"] == 1.0 and report["max_abs_diff"] < 1e-3
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["channels"] == "3" and json.loads(props["classes"])[0] == "airplane"
    # Traced from a C-contiguous sample: the pooling is ReduceMean, not the as_strided Gather
    # an NHWC-strided sample gives (OpenVINO's INT8 path miscomputes that Gather).
    ops = [n.op_type for n in proto.graph.node]
    assert "ReduceMean" in ops and "Gather" not in ops, ops[-6:]


def test_failed_validation_leaves_no_file(mini_mnist, tmp_path, monkeypatch):
    run = make_run(tmp_path, "lenet5", mini_mnist)
    monkeypatch.setattr(onnx_export, "ATOL", -1.0)
    with pytest.raises(CnnDeployError, match=r"differs from PyTorch at batch 1.*tolerance"):
        export_onnx(run, data_dir=str(mini_mnist))
    assert not (run / "model.onnx").exists()
    assert not any(p.name.endswith(".tmp") for p in run.iterdir())


def test_onnx_accuracy_equals_pytorch_accuracy(mini_mnist, tmp_path):
    from cnndeploy.train.fit import TrainConfig, train

    run = tmp_path / "trained"
    train(TrainConfig(model="lenet5", dataset="mnist", out=str(run), data_dir=str(mini_mnist), epochs=1,
                      device="cpu"), progress=False)
    assert main(["export", str(run), "--onnx", "--data-dir", str(mini_mnist)]) == 0
    torch_acc = evaluate_run(run, data_dir=str(mini_mnist), device="cpu")["test_accuracy"]
    onnx_acc = evaluate_onnx(run / "model.onnx", data_dir=str(mini_mnist))["test_accuracy"]
    assert abs(torch_acc - onnx_acc) <= 1 / 2000  # at most one of 2000 images may flip on a near-tie


def test_export_needs_a_target_and_a_complete_run(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "pass --onnx" in capsys.readouterr().err
    (tmp_path / "model.json").write_text("{}")
    assert main(["export", str(tmp_path), "--onnx"]) == 2
    assert "lacks" in capsys.readouterr().err


def _pil(mode: str, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(1)
    bands = len(mode) if mode != "L" else 1
    arr = rng.integers(0, 255, (size[1], size[0], bands), dtype=np.uint8)
    return Image.fromarray(arr.squeeze(2) if bands == 1 else arr, mode)


@pytest.mark.parametrize("image", [
    _pil("L", (28, 28)), _pil("RGB", (57, 31)), _pil("RGBA", (100, 100)), _pil("L", (5, 300)),
    np.zeros((28, 28), np.uint8), np.ones((3, 40, 40), np.float32), np.full((64, 64, 4), 200, np.uint8),
])
def test_classifier_takes_any_image(exported, image):
    clf = Classifier(exported["lenet5"])
    x = clf.preprocess(image)
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    top = clf.classify(image, top_k=3)
    assert len(top) == 3 and all(label in clf.classes for label, _ in top)
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_classifier_batch_and_paths(exported, tmp_path):
    clf = Classifier(exported["resnet20"])
    paths = []
    for i, mode in enumerate(("L", "RGB", "RGBA")):
        paths.append(tmp_path / f"{i}.png")
        _pil(mode, (30 + i, 28)).save(paths[-1])
    results = clf.predict(paths, top_k=2)
    assert len(results) == 3 and all(len(r) == 2 for r in results)
    assert results[0] == clf.classify(Image.open(paths[0]), top_k=2)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageInputError, match="not a readable image"):
        clf.classify(tmp_path / "bad.png")


def _bare_onnx(path: Path, *, rank: int = 4, elem=onnx.TensorProto.FLOAT) -> Path:
    from onnx import helper

    shape = ["N", 1, 28, 28][:rank]
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", elem, shape)],
                              [helper.make_tensor_value_info("y", elem, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_files_without_our_metadata_or_wrong_inputs(tmp_path):
    bare = _bare_onnx(tmp_path / "bare.onnx")
    with pytest.raises(ModelFileError, match=r"lacks the metadata \['classes', 'mean', 'std'\]"):
        Classifier(bare)
    clf = Classifier(bare, classes=[str(i) for i in range(784)], mean=[0.5], std=[0.5])
    assert clf.preprocess(np.zeros((28, 28), np.uint8)).shape == (1, 28, 28)
    with pytest.raises(ModelFileError, match="expected one float32 NCHW input"):
        Classifier(_bare_onnx(tmp_path / "rank2.onnx", rank=2))
    with pytest.raises(ModelFileError, match="expected one float32 NCHW input"):
        Classifier(_bare_onnx(tmp_path / "int.onnx", elem=onnx.TensorProto.INT64))
    (tmp_path / "junk.onnx").write_bytes(b"<html>404</html>")
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        Classifier(tmp_path / "junk.onnx")


def test_runtime_does_not_import_torch_and_the_example_needs_only_the_file(exported, tmp_path):
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "digit.png")
    probe = ("import sys; from cnndeploy.serve.runtime import Classifier; "
             f"c = Classifier({str(exported['lenet5'])!r}); c.classify({str(tmp_path / 'digit.png')!r}); "
             "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"
    out = subprocess.run([sys.executable, str(REPO / "examples" / "embed_onnx.py"), str(exported["lenet5"]),
                          str(tmp_path / "digit.png")], capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in out.strip().splitlines()]
    assert len(rows) == 3 and all(r[0] in [str(i) for i in range(10)] for r in rows)
    ours = Classifier(exported["lenet5"]).classify(tmp_path / "digit.png")
    assert [r[0] for r in rows] == [label for label, _ in ours]


def test_with_preprocess_takes_raw_pixels(mini_mnist, tmp_path):
    run = make_run(tmp_path, "resnet20", mini_mnist)
    path, report = export_onnx(run, data_dir=str(mini_mnist), with_preprocess=True)
    raw = run / "model.uint8.onnx"
    assert report["uint8"]["top1_agreement"] == 1.0 and raw.is_file()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(raw), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [28, 28, 1]
    pixels = load_dataset("mnist", data_dir=mini_mnist).test_x[:5]                    # uint8 NCHW
    from_raw = sess.run(None, {inp.name: np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))})[0]
    from_float = Classifier(path).logits(((pixels / 255.0 - 0.1307) / 0.3081).astype(np.float32))
    np.testing.assert_allclose(from_raw, from_float, atol=1e-4, rtol=1e-4)


def test_classifier_refuses_pixel_bombs_and_non_raster_files(exported, tmp_path):
    clf = Classifier(exported["lenet5"])
    Image.new("L", (5000, 5000)).save(tmp_path / "bomb.png")
    with pytest.raises(ImageInputError, match="more than"):
        clf.classify(tmp_path / "bomb.png")
    (tmp_path / "eps.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")
    with pytest.raises(ImageInputError, match="not a readable image"):
        clf.classify(tmp_path / "eps.png")


def test_export_of_a_run_without_weights(exported, tmp_path, capsys):
    run = tmp_path / "noweights"
    run.mkdir()
    (run / "model.json").write_bytes((exported["lenet5"].parent / "model.json").read_bytes())
    assert main(["export", str(run), "--onnx"]) == 2
    assert "weights not found" in capsys.readouterr().err and not (run / "model.onnx").exists()


def _exif_rotated(tmp_path: Path) -> Path:
    img = Image.new("L", (40, 20), 0)
    img.paste(255, (0, 0, 20, 20))            # left half white
    exif = img.getexif()
    exif[0x0112] = 6                           # orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif)
    return tmp_path / "rot.jpg"


@pytest.mark.parametrize("make", [
    lambda p: Image.new("CMYK", (30, 30), (0, 50, 100, 0)),
    lambda p: Image.new("P", (30, 30)),
    lambda p: Image.fromarray(np.full((30, 30), 60000, np.uint16)),
    lambda p: Image.new("L", (1, 1)),
    lambda p: Image.new("RGB", (10000, 3)),
    lambda p: _exif_rotated(p),
    lambda p: np.zeros((28, 28), np.float64),
    lambda p: np.full((28, 28, 3), 7, np.int64),
])
def test_classifier_converts_odd_images(exported, tmp_path, make):
    clf = Classifier(exported["lenet5"])
    assert clf.preprocess(make(tmp_path)).shape == (1, 28, 28)
    assert len(clf.classify(make(tmp_path))) == 3


def test_classifier_scales_16_bit_and_honours_exif(exported, tmp_path):
    clf = Classifier(exported["lenet5"])
    bright = clf.preprocess(Image.fromarray(np.full((28, 28), 65535, np.uint16)))
    assert np.allclose(bright, (255 / 255 - 0.1307) / 0.3081, atol=1e-2)
    upright = clf.preprocess(Image.open(_exif_rotated(tmp_path)))  # 40x20 shown as 20x40: white on top
    assert upright[0, :10].mean() > upright[0, -10:].mean()


@pytest.mark.parametrize("bad,expected", [
    (np.zeros((2, 2, 2, 2), np.uint8), "shaped HxW"),
    (np.zeros((28, 28, 7), np.uint8), "1, 3 or 4 channels"),
    (np.full((28, 28), np.nan), "finite"),
    (np.zeros((28, 28), object), "finite numeric"),
])
def test_classifier_names_what_was_wrong(exported, bad, expected):
    with pytest.raises(ImageInputError, match=expected):
        Classifier(exported["lenet5"]).classify(bad)


def test_logits_check_shape_and_finiteness(exported):
    clf = Classifier(exported["lenet5"])
    with pytest.raises(ImageInputError, match=r"expected a batch shaped \[N, 1, 28, 28\], got \[2, 3, 28, 28\]"):
        clf.logits(np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(ImageInputError, match="NaN"):
        clf.logits(np.full((1, 1, 28, 28), np.inf, np.float32))


@pytest.mark.parametrize("location", ["../../../etc/hostname", "/etc/hostname"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((1,), np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    w.ClearField("raw_data")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "evil.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        Classifier(path, classes=["a"], mean=[0.0], std=[1.0])
