"""Hostile and broken files, bad data and bad inputs, each refused with one clear message.

RELIABILITY.md maps every case to the test that tries it; the cases already tried
elsewhere (test_data, test_train, test_export, test_tensorrt) are not repeated here.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from cnndeploy.artifacts import files as layout
from cnndeploy.models import weights
from cnndeploy.cli import main
from cnndeploy.data import load_dataset
from cnndeploy.errors import CheckpointError, DatasetError
from cnndeploy.export import tensorrt
from cnndeploy.models import create_model
from cnndeploy.runtime import classifier as runtime
from cnndeploy.serve.runtime import Classifier, ImageInputError, ModelFileError
from cnndeploy.train.fit import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
MNIST_META = {"dataset": "mnist", "dataset_source": "mnist-idx", "classes": [str(i) for i in range(10)],
              "channels": 1, "height": 28, "width": 28, "mean": [0.1307], "std": [0.3081]}


# ---------------------------------------------------------------- helpers

def tiny_run(root: Path, name: str = "run", **meta_overrides) -> Path:
    """An untrained LeNet-5 run directory (weights + model.json) for 1x28x28 MNIST."""
    torch.manual_seed(0)
    model = create_model("lenet5", 10, 1, 28, 28)
    run = root / name
    run.mkdir(parents=True)
    weights.save_weights(run / layout.WEIGHTS, model)
    meta = {**weights.card_for("lenet5", model, MNIST_META).to_json(), **meta_overrides}
    (run / layout.MODEL_JSON).write_text(json.dumps(meta))
    return run


def tiny_onnx(path: Path, *, channels: int = 1, classes: int = 10, metadata: bool = True,
              tail: float | None = None, external: str | None = None, props: dict | None = None) -> Path:
    """input [N, C, 28, 28] -> Flatten -> MatMul W -> logits [N, classes] (optionally * `tail`).

    With `external`, W is stored as external data at that location (written beside the model
    when it is a plain relative name)."""
    w = np.random.default_rng(0).standard_normal((channels * 28 * 28, classes)).astype(np.float32) * 0.01
    init = numpy_helper.from_array(w, "W")
    if external is not None:
        init.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", str(w.nbytes))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
        init.ClearField("raw_data")
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["mm" if tail is not None else "logits"])]
    inits = [init]
    if tail is not None:
        nodes.append(helper.make_node("Mul", ["mm", "k"], ["logits"]))
        inits.append(numpy_helper.from_array(np.array([tail], np.float32), "k"))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, 28, 28])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])]
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        props = {"classes": json.dumps([str(i) for i in range(classes)]), "channels": str(channels),
                 "height": "28", "width": "28", "mean": json.dumps([0.5] * channels),
                 "std": json.dumps([0.25] * channels), "model": "tiny", "dataset": "mnist", **(props or {})}
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def cli(capsys, *args: str) -> tuple[int, str]:
    """Run the CLI in-process; an expected error must be one line on stderr without a traceback."""
    code = main(list(args))
    err = capsys.readouterr().err
    if code != 0:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return code, err


class _Payload:
    """Unpickling this runs `touch marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ---------------------------------------------------------------- 1. pickles are never loaded

@pytest.fixture
def hostile_pt(tmp_path) -> tuple[Path, Path]:
    """A torch.save file whose unpickling would create `marker`; proven live on a twin file."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save({"state_dict": _Payload(marker)}, evil)
    twin_marker = tmp_path / "twin-pwned"
    torch.load(_twin(tmp_path, twin_marker), weights_only=False)   # what we must never do
    assert twin_marker.exists(), "the payload is not live: this test would prove nothing"
    return evil, marker


def _twin(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "twin.pt"
    torch.save({"state_dict": _Payload(marker)}, path)
    return path


def test_pickles_are_refused_on_every_path(hostile_pt, tmp_path, mini_mnist, capsys):
    evil, marker = hostile_pt
    code, err = cli(capsys, "eval", str(evil))
    assert code == 2 and "never loaded" in err and str(evil) in err
    run = tiny_run(tmp_path)
    (run / layout.WEIGHTS).write_bytes(evil.read_bytes())      # a pickle named model.safetensors
    for args in (["eval", str(run)], ["export", str(run), "--onnx", "--data-dir", str(mini_mnist)],
                 ["prune", str(run), "--amount", "0.5", "--data-dir", str(mini_mnist)]):
        code, err = cli(capsys, *args)
        assert code == 2 and "corrupt or incomplete" in err, args
    (run / layout.WEIGHTS).unlink()
    (run / layout.CHECKPOINT).write_bytes(evil.read_bytes())   # and one named checkpoint.safetensors
    code, err = cli(capsys, "train", "--model", "lenet5", "--dataset", "mnist", "--out", str(run), "--resume")
    assert code == 2 and "corrupt or incomplete" in err
    cfg = TrainConfig(model="lenet5", dataset="mnist", out=str(tmp_path / "init"), data_dir=str(mini_mnist),
                      epochs=1, subset=64, device="cpu", init_weights=str(evil))
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        train(cfg, progress=False)
    onnx_named = tmp_path / "model.onnx"
    onnx_named.write_bytes(evil.read_bytes())
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        Classifier(onnx_named)
    assert not marker.exists()


def test_no_code_path_can_unpickle():
    """No torch.load / pickle.load / allow_pickle=True / weights_only=False anywhere in the package."""
    banned = re.compile(r"torch\.load\(|torch\.jit\.load|weights_only\s*=\s*False|pickle\.loads?\(|"
                        r"allow_pickle\s*=\s*True|joblib\.load|dill\.load")
    hits = [f"{p.relative_to(REPO)}:{i}" for p in (REPO / "src").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]
    assert hits == []
    # The one unpickler (CIFAR-10 batches) admits numpy reconstruction only.
    from cnndeploy.data import cifar

    assert {m for m, _ in cifar._ALLOWED} <= {"numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                                               "numpy.core.numeric", "numpy._core.numeric", "_codecs"}


# ---------------------------------------------------------------- 2-3. broken and hostile safetensors

@pytest.mark.parametrize("cut", ["4 bytes", "half the header", "half the body", "the last byte"])
def test_truncated_weights_are_corrupt_or_incomplete(tmp_path, cut, capsys):
    run = tiny_run(tmp_path)
    data = (run / layout.WEIGHTS).read_bytes()
    header = 8 + struct.unpack("<Q", data[:8])[0]
    keep = {"4 bytes": 4, "half the header": header // 2, "half the body": (header + len(data)) // 2,
            "the last byte": len(data) - 1}[cut]
    (run / layout.WEIGHTS).write_bytes(data[:keep])
    code, err = cli(capsys, "eval", str(run))
    assert code == 2 and "corrupt or incomplete" in err and str(run / layout.WEIGHTS) in err


def _safetensors(header: dict | None, body: bytes = b"", claimed_len: int | None = None) -> bytes:
    raw = json.dumps(header).encode() if header is not None else b""
    return struct.pack("<Q", len(raw) if claimed_len is None else claimed_len) + raw + body


HOSTILE_SAFETENSORS = {
    "header length 2^62": _safetensors(None, b"{}", claimed_len=1 << 62),
    "header length past the file": _safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                                                b"\0" * 16, claimed_len=5000),
    "4 TB tensor": _safetensors({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20],
                                       "data_offsets": [0, 4 << 40]}}, b"\0" * 16),
    "offsets beyond the file": _safetensors({"w": {"dtype": "F32", "shape": [4],
                                                   "data_offsets": [1 << 40, (1 << 40) + 16]}}, b"\0" * 16),
    "shape larger than offsets": _safetensors({"w": {"dtype": "F32", "shape": [1 << 30],
                                                     "data_offsets": [0, 16]}}, b"\0" * 16),
}

def memory_capped(extra_mb: int, *, probe: bool = True) -> str:
    """Python source that caps this process's address space at its size now + `extra_mb`; with
    `probe`, it prints LIMIT OK once a 1 GB allocation has failed (the cap is really on)."""
    code = ("import resource, sys\n"
            "vm = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize')).split()[1]) * 1024\n"
            f"resource.setrlimit(resource.RLIMIT_AS, (vm + ({extra_mb} << 20), resource.RLIM_INFINITY))\n")
    if probe:
        code += ("try:\n    bytearray(1 << 30)\n    print('NO LIMIT')\n"
                 "except MemoryError:\n    print('LIMIT OK')\n")
    return code


_LIMITED_LOAD = memory_capped(768) + """
from cnndeploy.errors import CheckpointError
from cnndeploy.models.weights import load_tensors
for path in sys.argv[1:]:
    try:
        load_tensors(path)
        print('LOADED', path)
    except CheckpointError as e:
        print('REFUSED', e)
"""


def test_hostile_safetensors_headers_are_refused_before_allocating(tmp_path):
    """Under an address-space cap of +768 MB (a 1 GB allocation fails), every file is refused."""
    paths = []
    for i, data in enumerate(HOSTILE_SAFETENSORS.values()):
        paths.append(tmp_path / f"{i}.safetensors")
        paths[-1].write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", _LIMITED_LOAD, *map(str, paths)], capture_output=True,
                          text=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stderr
    assert lines[0] == "LIMIT OK"
    assert len(lines) == 1 + len(paths) and all(line.startswith("REFUSED") for line in lines[1:]), lines
    assert all("corrupt or incomplete" in line for line in lines[1:])


# ---------------------------------------------------------------- 4-5. weights vs model.json

def test_missing_and_extra_keys_are_listed(tmp_path):
    run = tiny_run(tmp_path)
    state, _ = weights.load_tensors(run / layout.WEIGHTS)
    missing = sorted(state)[0]
    del state[missing]
    state["head.surprise"] = torch.zeros(3)
    from safetensors.torch import save_file

    save_file(state, str(run / layout.WEIGHTS))
    with pytest.raises(CheckpointError) as info:
        weights.load_run(run)
    msg = str(info.value)
    assert f"missing keys ['{missing}']" in msg and "unexpected keys ['head.surprise']" in msg
    assert "model.json" in msg


BAD_MODEL_JSON = [
    pytest.param(None, "model.json not found", id="missing"),
    pytest.param('{"model": "lenet5",', "not valid JSON", id="malformed"),
    pytest.param("[" * 100000, "not valid JSON", id="deeply-nested"),
    pytest.param(b"\xff\xfe{}", "not valid JSON", id="not-utf8"),
    pytest.param("[]", "expected a JSON object", id="not-an-object"),
    pytest.param({"model": "vgg16"}, "unknown model 'vgg16'", id="unknown-model"),
    pytest.param({"widths": {"conv": [-6, 16], "fc": [120, 84]}}, "positive integers", id="negative-width"),
    pytest.param({"widths": [6, 16]}, "cannot build the model", id="widths-not-a-dict"),
    pytest.param({"channels": "three"}, "cannot build the model", id="channels-not-a-number"),
]


@pytest.mark.parametrize("content,expected", BAD_MODEL_JSON)
def test_bad_model_json_is_one_clear_error(tmp_path, capsys, content, expected):
    run = tiny_run(tmp_path)
    meta_path = run / layout.MODEL_JSON
    if content is None:
        meta_path.unlink()
    elif isinstance(content, dict):
        meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), **content}))
    else:
        meta_path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, err = cli(capsys, "eval", str(run))
    assert code == 2 and expected in err and str(run) in err


# ---------------------------------------------------------------- 6. ONNX external data

def _escaping_model(tmp_path: Path, how: str) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"\x07" * (28 * 28 * 10 * 4))
    folder = tmp_path / "models"
    folder.mkdir()
    location = {"dotdot": "../outside/secret.bin", "etc-passwd": "../../../../../../etc/passwd",
                "absolute": str(outside / "secret.bin"), "symlink": "link.bin",
                "symlinked-dir": "linkdir/secret.bin"}[how]
    if how == "symlink":
        (folder / "link.bin").symlink_to(outside / "secret.bin")
    if how == "symlinked-dir":
        (folder / "linkdir").symlink_to(outside)
    return tiny_onnx(folder / "evil.onnx", external=location)


ESCAPES = ["dotdot", "etc-passwd", "absolute", "symlink", "symlinked-dir"]


@pytest.mark.parametrize("how", ESCAPES)
def test_external_data_outside_the_folder_is_refused_by_us_and_by_onnx(tmp_path, how, capsys):
    path = _escaping_model(tmp_path, how)
    with pytest.raises(ModelFileError, match="not a plain file inside the model's folder"):
        Classifier(path)
    code, err = cli(capsys, "eval", str(path))
    assert code == 2 and "not a plain file inside the model's folder" in err
    with pytest.raises(onnx.checker.ValidationError):   # onnx's own check, on the same file
        onnx.load(str(path))


@pytest.mark.parametrize("how", ESCAPES)
def test_onnxruntime_refuses_them_too_without_our_check(tmp_path, how, monkeypatch):
    """Defence in depth: with our check switched off, onnxruntime still refuses the file."""
    path = _escaping_model(tmp_path, how)
    monkeypatch.setattr(runtime, "check_external_data", lambda p: None)
    with pytest.raises(ModelFileError, match="not a loadable ONNX model.*[Ee]xternal data"):
        Classifier(path)


def test_external_data_beside_the_model_is_fine(tmp_path):
    """The check is not a blanket refusal: a weights file in the model's folder loads and runs."""
    w = np.random.default_rng(0).standard_normal((28 * 28, 10)).astype(np.float32) * 0.01
    (tmp_path / "weights.bin").write_bytes(w.tobytes())
    clf = Classifier(tiny_onnx(tmp_path / "ok.onnx", external="weights.bin"))
    x = np.ones((2, 1, 28, 28), np.float32)
    np.testing.assert_allclose(clf.logits(x), x.reshape(2, -1) @ w, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- 7. ONNX files that are not ours

def test_eval_of_an_onnx_file_without_metadata(tmp_path, capsys):
    code, err = cli(capsys, "eval", str(tiny_onnx(tmp_path / "bare.onnx", metadata=False)))
    assert code == 2 and "lacks the metadata ['classes', 'mean', 'std']" in err


@pytest.mark.parametrize("meta,expected", [
    ({"classes": json.dumps(["a", "b"])}, "outputs 10 logits but its metadata names 2 classes"),
    ({"std": "[0.0]"}, "positive std"),
    ({"mean": "[0.5, 0.5, 0.5]"}, "1 finite mean"),
    ({"channels": "2"}, "channels 1 or 3"),
    ({"classes": "[]"}, "non-empty list"),
    ({"mean": "[0.5"}, "malformed metadata"),
])
def test_onnx_metadata_that_cannot_be_right(tmp_path, meta, expected):
    with pytest.raises(ModelFileError, match=re.escape(expected)):
        Classifier(tiny_onnx(tmp_path / "m.onnx", props=meta))


# ---------------------------------------------------------------- 8. TensorRT engines (checks without TensorRT)

def test_engine_for_another_tensorrt_or_gpu_says_rebuild(tmp_path):
    name = tensorrt.engine_name("fp16", "10.9.0.34", (9, 0))
    (tmp_path / name).write_bytes(b"\1" * 4096)
    tensorrt.check_engine_file(tmp_path / name, "10.9.0.34", (9, 0))     # the right machine: accepted
    for version, cc, theirs in (("10.13.0", (9, 0), "TensorRT 10.13.0 on sm90"),
                                ("10.9.0.34", (8, 9), "TensorRT 10.9.0.34 on sm89")):
        with pytest.raises(tensorrt.TensorRTError, match="built for TensorRT 10.9.0.34 on sm90") as info:
            tensorrt.check_engine_file(tmp_path / name, version, cc)
        assert theirs in str(info.value) and "rebuild the engine" in str(info.value)


@pytest.mark.parametrize("content", [b"", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n",
                                     b"<html>404</html>"])
def test_truncated_or_stub_engine_says_rebuild(tmp_path, content):
    path = tmp_path / tensorrt.engine_name("fp32", "10.9.0.34", (9, 0))
    path.write_bytes(content)
    with pytest.raises(tensorrt.TensorRTError, match=rf"truncated or not an engine \({len(content)} bytes\): "
                                                     "rebuild the engine"):
        tensorrt.check_engine_file(path, "10.9.0.34", (9, 0))
    with pytest.raises(tensorrt.TensorRTError, match="engine not found"):
        tensorrt.check_engine_file(tmp_path / "model.engine", "10.9.0.34", (9, 0))


@pytest.mark.parametrize("shape,dtype,expected", [
    ((300, 1, 28, 28), "torch.float32", "a batch of 300 is outside the engine's profile"),
    ((0, 1, 28, 28), "torch.float32", "a batch of 0 is outside"),
    ((4, 3, 28, 28), "torch.float32", "got float32 [4, 3, 28, 28]"),
    ((1, 28, 28), "torch.float32", "got float32 [1, 28, 28]"),
    ((4, 1, 28, 28), "torch.float64", "got float64 [4, 1, 28, 28]"),
    ((4, 1, 28, 28), "torch.int64", "got int64"),
])
def test_engine_inputs_name_expected_and_received(shape, dtype, expected):
    with pytest.raises(tensorrt.TensorRTError) as info:
        tensorrt.check_input(shape, dtype, (1, 28, 28), 256)
    msg = str(info.value)
    assert expected in msg and "float32 [N, 1, 28, 28] with N from 1 to 256" in msg
    tensorrt.check_input((256, 1, 28, 28), "torch.float32", (1, 28, 28), 256)   # the largest batch is fine


# ---------------------------------------------------------------- 9-11. data

def test_tar_links_are_never_followed_and_nothing_is_written_outside_the_cache(tmp_path, monkeypatch):
    from test_data import make_archive, tree_members, write_image_tree

    write_image_tree(tmp_path / "src")
    (tmp_path / "work").mkdir()
    archive = make_archive(tmp_path / "work" / "pets.tar.gz", tree_members(tmp_path / "src"))
    with tarfile.open(archive, "r:gz") as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    with tarfile.open(archive, "w:gz") as t:
        for m, data in members:
            t.addfile(m, io.BytesIO(data))
        for kind, name, target in ((tarfile.SYMTYPE, "train/cat/passwd.png", "/etc/passwd"),
                                   (tarfile.LNKTYPE, "train/cat/hard.png", "/etc/hostname"),
                                   (tarfile.SYMTYPE, "train/dog/up.png", "../../../../x.png")):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, target
            t.addfile(link)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNDEPLOY_CACHE", str(cache))
    before = {p for p in tmp_path.rglob("*")}
    ds = load_dataset(str(archive))
    assert ds.classes == ["cat", "dog"] and len(ds.train_y) == 6        # links added nothing
    written = {p for p in tmp_path.rglob("*")} - before
    assert written and all(p == cache or cache in p.parents for p in written), sorted(map(str, written))


def _tiny_idx(tmp_path: Path, **replace: np.ndarray) -> Path:
    from test_data import MNIST_FILES, tiny_mnist_arrays, write_idx

    arrays = {**tiny_mnist_arrays(), **replace}
    for key, stem in MNIST_FILES.items():
        write_idx(tmp_path / "mnist" / stem, arrays[key])
    return tmp_path


@pytest.mark.parametrize("replace,expected", [
    ({"train_y": np.arange(5, dtype=np.uint8)}, "6 images but 5 labels"),
    ({"test_y": np.array([0, 1, 10, 2], np.uint8)}, "labels outside 0..9 (found 0..10)"),
    ({"train_y": np.zeros((6, 2), np.uint8)}, "labels [N]"),
    ({"test_x": np.zeros((4, 784), np.uint8)}, "images must be [N, H, W]"),
])
def test_idx_images_and_labels_that_disagree(tmp_path, replace, expected):
    with pytest.raises(DatasetError, match=re.escape(expected)):
        load_dataset("mnist", data_dir=_tiny_idx(tmp_path, **replace), use_cache=False)


def test_idx_size_claims_are_checked_before_reading(tmp_path):
    from cnndeploy.data.mnist import read_idx

    huge = tmp_path / "huge-idx3-ubyte"
    huge.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 100000, 1000, 1000) + b"\0" * 100)
    with pytest.raises(DatasetError, match="claims .* more than the 4294967296 allowed"):
        read_idx(huge)
    import gzip

    bomb = tmp_path / "bomb-idx1-ubyte.gz"      # declares 10 labels, inflates to 64 MB
    bomb.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\0" * (64 << 20)))
    assert bomb.stat().st_size < 200_000
    with pytest.raises(DatasetError, match=r"header says \(10,\) \(10 bytes\), file holds more"):
        read_idx(bomb)


def test_data_dir_that_cannot_be_read(mini_mnist, tmp_path, monkeypatch, capsys):
    """Permission denied on the dataset files (simulated: the tests run as root, which chmod cannot stop)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(mini_mnist / "mnist", data / "mnist")
    real_open = io.open

    def deny(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).startswith(str(data)):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", deny)
    monkeypatch.setattr(io, "open", deny)
    code, err = cli(capsys, "train", "--model", "lenet5", "--dataset", "mnist", "--data-dir", str(data),
                    "--out", str(tmp_path / "run"), "--epochs", "1")
    assert code == 2 and "Permission denied" in err and str(data / "mnist") in err
    assert not (tmp_path / "run").exists()


def test_data_dir_that_is_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CNNDEPLOY_DATA", raising=False)
    monkeypatch.setenv("CNNDEPLOY_CACHE", str(tmp_path / "cache"))
    (tmp_path / "notes.txt").write_text("not a folder")
    code, err = cli(capsys, "train", "--model", "lenet5", "--dataset", "mnist", "--data-dir",
                    str(tmp_path / "notes.txt"), "--out", str(tmp_path / "run"))
    assert code == 2 and f"--data-dir: {tmp_path / 'notes.txt'}" in err and "expected" in err


def test_cache_dir_that_cannot_be_written_only_costs_time(mini_mnist, tmp_path, monkeypatch, caplog):
    (tmp_path / "file").write_text("a file where the cache folder should be")
    monkeypatch.setenv("CNNDEPLOY_CACHE", str(tmp_path / "file" / "cache"))
    with caplog.at_level("WARNING", logger="cnndeploy"):
        ds = load_dataset("mnist", data_dir=mini_mnist)
    assert len(ds.train_y) == 10000 and len(ds.test_y) == 2000
    assert "not caching the decoded dataset" in caplog.text and "Not a directory" in caplog.text


# ---------------------------------------------------------------- 17-19. inference inputs

@pytest.fixture(scope="module")
def grey(tmp_path_factory) -> Classifier:
    return Classifier(tiny_onnx(tmp_path_factory.mktemp("onnx") / "grey.onnx"))


@pytest.fixture(scope="module")
def rgb(tmp_path_factory) -> Classifier:
    return Classifier(tiny_onnx(tmp_path_factory.mktemp("onnx") / "rgb.onnx", channels=3))


@pytest.mark.parametrize("batch,expected", [
    (np.zeros((2, 1, 28, 28), np.float64), "expected a float32 numpy batch (preprocessed with preprocess()), "
                                           "got float64"),
    (np.zeros((2, 1, 28, 28), np.int64), "got int64"),
    (np.zeros((2, 1, 28, 28), np.uint8), "got uint8"),
    ([[0.0]], "got list"),
    (np.zeros((1, 28, 28), np.float32), "expected a batch shaped [N, 1, 28, 28], got [1, 28, 28]"),
    (np.zeros((2, 3, 28, 28), np.float32), "got [2, 3, 28, 28]"),
    (np.zeros((2, 1, 32, 32), np.float32), "got [2, 1, 32, 32]"),
])
def test_runtime_batches_name_expected_and_received(grey, batch, expected):
    with pytest.raises(ImageInputError, match=re.escape(expected)):
        grey.logits(batch)


def test_evaluate_paths_name_expected_and_received(tmp_path, capsys):
    """eval of a run directory and of an ONNX file on images the model cannot take."""
    from test_data import write_image_tree

    write_image_tree(tmp_path / "pets")                      # 3-channel images, 2 classes
    run = tiny_run(tmp_path)
    model = tiny_onnx(tmp_path / "m.onnx")
    for target in (str(run), str(model)):
        code, err = cli(capsys, "eval", target, "--dataset", str(tmp_path / "pets"))
        assert code == 2 and "does not match the model" in err
        assert "['cat', 'dog'] and images 3x28x28, expected ['0', '1'," in err and "1x28x28" in err


def test_nan_or_inf_logits_are_flagged_not_returned(tmp_path):
    for tail in (float("nan"), float("inf")):
        clf = Classifier(tiny_onnx(tmp_path / f"{tail}.onnx", tail=tail))
        with pytest.raises(ModelFileError, match="produced NaN or infinite logits; not a prediction"):
            clf.classify(np.zeros((28, 28), np.uint8))
        with pytest.raises(ModelFileError, match="NaN or infinite"):
            clf.predict([np.zeros((28, 28), np.uint8)] * 3)
    with pytest.raises(ImageInputError, match="finite"):
        clf.classify(np.array([[np.inf, 0.5]], np.float32))


def _animated_gif(path: Path) -> Path:
    frames = [Image.new("L", (30, 30), v) for v in (250, 0, 128)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)
    return path


def test_animated_gif_uses_the_first_frame(grey, tmp_path):
    """By path and as an opened PIL image: frame 0 (bright), not a later one, and no shape crash."""
    gif = _animated_gif(tmp_path / "anim.gif")
    want = (250 / 255 - 0.5) / 0.25
    np.testing.assert_allclose(grey.preprocess(gif), want, atol=1e-5)
    np.testing.assert_allclose(grey.preprocess(Image.open(gif)), want, atol=1e-5)
    assert len(grey.classify(gif)) == 3


@pytest.mark.parametrize("mode", ["1", "LA", "PA", "I", "F", "I;16B", "HSV", "YCbCr", "LAB", "RGBX"])
def test_every_pillow_mode_is_converted(grey, rgb, mode):
    """LAB into a grey model was a crash (Pillow has no LAB->L); it now goes through RGB."""
    img = Image.new(mode, (13, 7))
    assert grey.preprocess(img).shape == (1, 28, 28)
    assert rgb.preprocess(img).shape == (3, 28, 28)


def test_truncated_files_and_unknown_inputs_are_image_errors(grey, tmp_path):
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:60])
    with pytest.raises(ImageInputError, match="not a readable image"):
        grey.classify(tmp_path / "cut.png")
    with pytest.raises(ImageInputError, match="RGB image of 64x64: not a readable image"):
        grey.classify(Image.open(tmp_path / "cut.png"))      # an opened-but-undecodable PIL image
    with pytest.raises(ImageInputError, match=r"^4 bytes: not a readable image"):
        grey.classify(b"\x89PNG")
    assert grey.preprocess((tmp_path / "full.png").read_bytes()).shape == (1, 28, 28)
    for bad in (42, None, [[0, 1]]):
        with pytest.raises(ImageInputError, match="expected a PIL image, an image path, encoded image bytes "
                                                  "or a numpy array, got "):
            grey.classify(bad)
