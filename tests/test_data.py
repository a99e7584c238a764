"""The dataset layer: MNIST IDX, CIFAR-10 (pickles, binary, JPEG copy), image folders and
archives, dataset lookup, --download, and the on-device batches with their augmentation."""

from __future__ import annotations

import builtins
import gzip
import hashlib
import io
import json
import logging
import os
import pickle
import struct
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnndeploy.artifacts.card import ModelCard
from cnndeploy.data import cifar, dataset_for, download, load, load_dataset
from cnndeploy.data.device import Augment, DeviceSplit, random_crop, random_flip
from cnndeploy.errors import DatasetError

MNIST_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
               "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


# ---------------------------------------------------------------- helpers: synthetic files

def idx_bytes(arr: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: magic 00 00 08 <ndim>, big-endian dims, then the data."""
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray) -> Path:
    data = idx_bytes(arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def tiny_mnist_arrays(n_train=6, n_test=4, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train_y": np.arange(n_train, dtype=np.uint8) % 10,
            "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "test_y": (np.arange(n_test, dtype=np.uint8) * 3) % 10}


def write_tiny_mnist(folder: Path, gz=True) -> dict[str, np.ndarray]:
    """The four IDX files in `folder`; returns the arrays written (images as [N, 28, 28])."""
    arrays = tiny_mnist_arrays()
    for key, stem in MNIST_FILES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


def assert_mnist_matches(ds, arrays) -> None:
    assert ds.source == "mnist-idx" and ds.classes == [str(i) for i in range(10)]
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(ds, f"{split}_x"), arrays[f"{split}_x"][:, None])
        np.testing.assert_array_equal(getattr(ds, f"{split}_y"), arrays[f"{split}_y"])


def cifar_batches(n=3, seed=0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """batch name -> (uint8 [n, 3072] rows, labels), for data_batch_1..5 and test_batch."""
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                   [int(v) for v in rng.integers(0, 10, n)])
            for name in cifar.TRAIN_BATCHES + [cifar.TEST_BATCH]}


def write_cifar_python(folder: Path, batches) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    meta = {b"label_names": [c.encode() for c in cifar.CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_cifar_binary(folder: Path, batches) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        records = np.concatenate([np.asarray(labels, np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    return folder


def tree_members(src: Path) -> dict[str, bytes]:
    """Every file under `src` by relative posix name, in sorted order."""
    return {p.relative_to(src).as_posix(): p.read_bytes()
            for p in sorted(src.rglob("*")) if p.is_file()}


def make_archive(dest: Path, members: dict[str, bytes]) -> Path:
    """A .tar.gz or .zip holding `members` in the given order, names written as they are."""
    if dest.suffix == ".zip":
        with zipfile.ZipFile(dest, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
    else:
        with tarfile.open(dest, "w:gz") as t:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return dest


def assert_cifar_matches(ds, batches, source: str) -> None:
    assert ds.source == source and ds.classes == cifar.CLASSES
    n = len(batches[cifar.TEST_BATCH][1])
    assert ds.train_x.shape == (5 * n, 3, 32, 32) and ds.train_x.dtype == np.uint8
    assert ds.test_x.shape == (n, 3, 32, 32)
    # image k of data_batch_2 is train image n + k; its row is R (1024) then G then B, row-major
    row = batches["data_batch_2"][0][1]
    img = ds.train_x[n + 1]
    assert img[0, 0, 0] == row[0] and img[0, 0, 5] == row[5] and img[0, 1, 0] == row[32]
    assert img[1, 0, 0] == row[1024] and img[2, 31, 31] == row[3071]
    np.testing.assert_array_equal(img, row.reshape(3, 32, 32))
    expected_y = sum((batches[b][1] for b in cifar.TRAIN_BATCHES), [])
    np.testing.assert_array_equal(ds.train_y, expected_y)
    np.testing.assert_array_equal(ds.test_x, batches[cifar.TEST_BATCH][0].reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(ds.test_y, batches[cifar.TEST_BATCH][1])


def write_image_tree(root: Path, classes=("dog", "cat"), counts=(("train", 3), ("test", 2)),
                     mode="RGB", ext=".png", seed=0) -> dict[str, np.ndarray]:
    """train/<class>/NN<ext> and test/<class>/NN<ext>, 8x8 images, written in a shuffled order.

    Returns relative path -> the CHW uint8 array written."""
    rng = np.random.default_rng(seed)
    images = {}
    for split, n in counts:
        for cls in classes:
            for i in rng.permutation(n):
                rel = f"{split}/{cls}/{i:02d}{ext}"
                shape = (8, 8) if mode == "L" else (8, 8, 3)
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr, mode).save(root / rel)
                images[rel] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return images


def expected_split(images: dict[str, np.ndarray], split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's arrays in sorted path order, labels indexing the sorted class names."""
    rels = sorted(r for r in images if r.startswith(split + "/"))
    classes = sorted({r.split("/")[1] for r in images})
    return (np.stack([images[r] for r in rels]),
            np.array([classes.index(r.split("/")[1]) for r in rels], dtype=np.int64))


def canonical(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort samples by (label, pixels) so that arrays can be compared ignoring order."""
    order = sorted(range(len(y)), key=lambda i: (int(y[i]), x[i].tobytes()))
    return x[order], y[order]


def image_bytes(fmt="PNG") -> bytes:
    """One random 8x8 RGB image, encoded as `fmt`."""
    buf = io.BytesIO()
    arr = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


# ---------------------------------------------------------------- MNIST

def test_real_mnist(shared_data):
    ds = load_dataset("mnist", data_dir=shared_data)
    assert ds.source == "mnist-idx" and ds.name == "mnist"
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == ds.test_x.dtype == np.uint8
    assert len(ds.train_y) == 60000 and len(ds.test_y) == 10000
    assert set(np.unique(ds.train_y)) == set(range(10)) == set(np.unique(ds.test_y))
    assert ds.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


def test_mnist_torchvision_raw_layout(tmp_path):
    arrays = write_tiny_mnist(tmp_path / "MNIST" / "raw", gz=False)
    assert_mnist_matches(load_dataset("mnist", data_dir=tmp_path), arrays)


# Each case turns a good IDX file's bytes into a broken file, stored under the stem + suffix.
BROKEN_IDX = [
    pytest.param(lambda raw: raw[:-10], "", id="truncated-data"),
    pytest.param(lambda raw: raw + b"\0" * 5, "", id="oversized-data"),
    pytest.param(lambda raw: gzip.compress(raw[:-10], mtime=0), ".gz", id="truncated-data-gz"),
    pytest.param(lambda raw: gzip.compress(raw, mtime=0)[:-30], ".gz", id="truncated-gzip-stream"),
    pytest.param(lambda raw: b"\x1f\x9d\x08\x03" + raw[4:], "", id="bad-magic"),
    pytest.param(lambda raw: raw[:8], "", id="truncated-header"),
    pytest.param(lambda raw: b"\0\0\x08\x00", "", id="zero-dimensions"),
]


@pytest.mark.parametrize("corrupt,suffix", BROKEN_IDX)
def test_mnist_broken_idx_raises(tmp_path, corrupt, suffix):
    folder = tmp_path / "mnist"
    write_tiny_mnist(folder, gz=False)
    good = folder / MNIST_FILES["train_x"]
    bad = good.with_name(good.name + suffix)
    raw = good.read_bytes()
    good.unlink()
    bad.write_bytes(corrupt(raw))
    with pytest.raises(DatasetError, match=bad.name):
        load_dataset("mnist", data_dir=tmp_path, use_cache=False)


# ---------------------------------------------------------------- CIFAR-10 pickles and binary

@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar.gz"])
def test_cifar_python(tmp_path, packed):
    batches = cifar_batches()
    folder = write_cifar_python(tmp_path / "src" / "cifar-10-batches-py", batches)
    root = tmp_path / "root"
    root.mkdir()
    if packed:
        make_archive(root / "cifar-10-python.tar.gz", tree_members(tmp_path / "src"))
    else:
        folder.rename(root / folder.name)
    assert_cifar_matches(load_dataset("cifar10", data_dir=root), batches, "cifar10-python")


class _Hostile:
    """Unpickling this runs `call(*args)`: each variant would create the marker file."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("how", ["os.system", "builtins.open", "subprocess.call"])
def test_cifar_python_hostile_pickle_is_refused(tmp_path, how):
    marker = tmp_path / "pwned"
    call, args = {"os.system": (os.system, (f"touch {marker}",)),
                  "builtins.open": (builtins.open, (str(marker), "w")),
                  "subprocess.call": (subprocess.call, (["touch", str(marker)],))}[how]
    folder = write_cifar_python(tmp_path / "cifar-10-batches-py", cifar_batches())
    (folder / "data_batch_1").write_bytes(
        pickle.dumps({b"data": _Hostile(call, args), b"labels": [0]}, protocol=2))
    with pytest.raises(DatasetError, match="data_batch_1"):
        load_dataset("cifar10", data_dir=tmp_path, use_cache=False)
    assert not marker.exists()


def test_cifar_binary(tmp_path):
    batches = cifar_batches(seed=1)
    write_cifar_binary(tmp_path / "src" / "cifar-10-batches-bin", batches)
    root = tmp_path / "root"
    root.mkdir()
    make_archive(root / "cifar-10-binary.tar.gz", tree_members(tmp_path / "src"))
    assert_cifar_matches(load_dataset("cifar10", data_dir=root), batches, "cifar10-binary")


def test_cifar_binary_bad_record_size(tmp_path):
    folder = write_cifar_binary(tmp_path / "cifar-10-batches-bin", cifar_batches())
    with open(folder / "data_batch_3.bin", "ab") as f:
        f.write(b"\0")
    with pytest.raises(DatasetError, match=r"data_batch_3\.bin.*3073"):
        load_dataset("cifar10", data_dir=tmp_path, use_cache=False)


def test_cifar_python_preferred_over_jpeg(tmp_path):
    batches = cifar_batches()
    write_cifar_python(tmp_path / "root" / "cifar-10-batches-py", batches)
    write_image_tree(tmp_path / "jpeg", classes=cifar.CLASSES, counts=(("train", 1), ("test", 1)),
                     ext=".jpg")
    jpeg = make_archive(tmp_path / "root" / "cifar10-jpeg.tar.gz", tree_members(tmp_path / "jpeg"))
    assert load_dataset(jpeg).source == "image-folder"   # the JPEG copy is itself loadable
    assert_cifar_matches(load_dataset("cifar10", data_dir=tmp_path / "root"), batches,
                         "cifar10-python")


# ---------------------------------------------------------------- the real CIFAR-10 JPEG copy

@pytest.fixture(scope="module")
def real_cifar(shared_data):
    if not (shared_data / "cifar10-jpeg.tar.gz").is_file():
        pytest.skip("cifar10-jpeg.tar.gz not in the shared datasets")
    return load_dataset("cifar10", data_dir=shared_data)   # ~15-20 s cold: decodes 60000 JPEGs


def test_real_cifar_jpeg(real_cifar):
    ds = real_cifar
    assert ds.source == "cifar10-jpeg" and ds.name == "cifar10" and ds.classes == cifar.CLASSES
    assert ds.train_x.shape == (50000, 3, 32, 32) and ds.test_x.shape == (10000, 3, 32, 32)
    assert ds.train_x.dtype == np.uint8
    assert np.bincount(ds.train_y).tolist() == [5000] * 10
    assert np.bincount(ds.test_y).tolist() == [1000] * 10
    assert ds.mean == cifar.MEAN and ds.std == cifar.STD


def test_real_cifar_second_load_is_cached(real_cifar, shared_data):
    start = time.perf_counter()
    again = load_dataset("cifar10", data_dir=shared_data)
    assert time.perf_counter() - start < 2.0
    assert again.source == "cifar10-jpeg" and again.classes == cifar.CLASSES
    np.testing.assert_array_equal(again.test_x, real_cifar.test_x)
    np.testing.assert_array_equal(again.train_y, real_cifar.train_y)


# ---------------------------------------------------------------- image folders and archives

@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("L", 1)])
def test_image_folder_and_archives_agree(tmp_path, mode, channels):
    images = write_image_tree(tmp_path / "pets", mode=mode)
    members = tree_members(tmp_path / "pets")
    sources = [tmp_path / "pets", make_archive(tmp_path / "pets.tar.gz", members),
               make_archive(tmp_path / "pets.zip", members)]
    for source in sources:
        ds = load_dataset(str(source))
        assert ds.name == "pets" and ds.source == "image-folder"
        assert ds.classes == ["cat", "dog"] and ds.channels == channels
        for split, n in (("train", 6), ("test", 4)):
            x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
            assert x.shape == (n, channels, 8, 8) and x.dtype == np.uint8
            for got, want in zip(canonical(x, y), canonical(*expected_split(images, split))):
                np.testing.assert_array_equal(got, want)


def test_image_folder_sample_order_is_by_name(tmp_path):
    images = write_image_tree(tmp_path / "pets")   # files created in a shuffled order
    make_archive(tmp_path / "rev.tar.gz", dict(reversed(tree_members(tmp_path / "pets").items())))
    for source in (tmp_path / "pets", tmp_path / "rev.tar.gz"):
        ds = load_dataset(str(source), use_cache=False)
        for split in ("train", "test"):
            x, y = expected_split(images, split)
            np.testing.assert_array_equal(getattr(ds, f"{split}_x"), x)
            np.testing.assert_array_equal(getattr(ds, f"{split}_y"), y)


def test_image_folder_skips_non_images_and_corrupt_files(tmp_path, caplog):
    root = tmp_path / "pets"
    images = write_image_tree(root)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 20)
    (root / "test" / "cat" / "cut.jpg").write_bytes(image_bytes("JPEG")[:60])
    with caplog.at_level(logging.WARNING, logger="cnndeploy"):
        ds = load_dataset(str(root))
    assert len(ds.train_y) == 6 and len(ds.test_y) == 4
    for split in ("train", "test"):
        got = canonical(getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y"))
        for g, w in zip(got, canonical(*expected_split(images, split))):
            np.testing.assert_array_equal(g, w)
    text = " ".join(r.getMessage() for r in caplog.records if r.name == "cnndeploy")
    assert "not an image" in text and "corrupt" in text and str(root) in text


def test_image_folder_missing_test_split(tmp_path):
    write_image_tree(tmp_path / "pets", counts=(("train", 2),))
    with pytest.raises(DatasetError, match="test"):
        load_dataset(str(tmp_path / "pets"))


def test_image_folder_empty_class(tmp_path):
    write_image_tree(tmp_path / "pets")
    (tmp_path / "pets" / "train" / "bird").mkdir()
    (tmp_path / "pets" / "train" / "bird" / "0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="bird"):
        load_dataset(str(tmp_path / "pets"))


@pytest.mark.parametrize("evil", ["../evil.png", "/abs.png", "train/cat/../../../evil.png"])
@pytest.mark.parametrize("ext", [".tar.gz", ".zip"])
def test_archive_member_outside_is_refused(tmp_path, evil, ext):
    work = tmp_path / "work"
    write_image_tree(work / "pets")
    members = {**tree_members(work / "pets"), evil: image_bytes()}
    archive = make_archive(work / f"pets{ext}", members)
    before = set(tmp_path.parent.iterdir())
    abs_existed = Path("/abs.png").exists()
    with pytest.raises(DatasetError, match="outside"):
        load_dataset(str(archive))
    assert set(tmp_path.parent.iterdir()) == before
    assert not (work / "evil.png").exists() and not (tmp_path / "evil.png").exists()
    assert Path("/abs.png").exists() == abs_existed


# ---------------------------------------------------------------- lookup

def test_missing_dataset_says_where_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNDEPLOY_DATA", raising=False)
    monkeypatch.setenv("CNNDEPLOY_CACHE", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", data_dir=empty)
    message = str(info.value)
    assert str(empty) in message and "--data-dir" in message and "--download" in message


@pytest.mark.parametrize("name, mentions_subset", [("mnist", True), ("cifar10", False)])
def test_missing_dataset_points_to_the_shipped_subset_and_download(name, mentions_subset, tmp_path, monkeypatch):
    monkeypatch.delenv("CNNDEPLOY_DATA", raising=False)
    monkeypatch.setenv("CNNDEPLOY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetError) as info:
        load_dataset(name, data_dir=tmp_path / "empty")
    message = str(info.value)
    assert f"--dataset {name} --download" in message
    assert ("--data-dir data/mnist-mini" in message) == mentions_subset


def _card(dataset: str, dataset_path: Path | None) -> ModelCard:
    mnist = dataset == "mnist"
    return ModelCard(model="lenet5", classes=tuple(str(i) for i in range(10)) if mnist else tuple(cifar.CLASSES),
                     channels=1 if mnist else 3, height=28 if mnist else 32, width=28 if mnist else 32,
                     mean=(0.5,) * (1 if mnist else 3), std=(0.25,) * (1 if mnist else 3), dataset=dataset,
                     dataset_path=str(dataset_path) if dataset_path else None)


def _recorded_dataset(name: str, root: Path) -> Path:
    """Dataset `name` under `root`, and the path training would record for it (load_dataset's ds.path)."""
    if name == "mnist":
        write_tiny_mnist(root / "mnist")
    else:
        write_cifar_python(root / "cifar-10-batches-py", cifar_batches())
    return load_dataset(name, data_dir=root).path


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_dataset_for_falls_back_to_where_the_model_was_trained(name, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("CNNDEPLOY_DATA", raising=False)
    monkeypatch.setenv("CNNDEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(load, "_announced", set())
    recorded = _recorded_dataset(name, tmp_path / "trained-on")
    card = _card(name, recorded)
    with caplog.at_level("INFO", logger="cnndeploy"):
        ds = dataset_for(card, data_dir=tmp_path / "empty")   # --data-dir first, then model.json
    assert ds.path == recorded
    assert [m for m in caplog.messages if " dataset: " in m] == [f"{name} dataset: {recorded} (recorded in model.json)"]
    # --data-dir and $CNNDEPLOY_DATA come before the recorded location
    elsewhere = _recorded_dataset(name, tmp_path / "elsewhere")
    assert dataset_for(card, data_dir=tmp_path / "elsewhere").path == elsewhere
    monkeypatch.setenv("CNNDEPLOY_DATA", str(tmp_path / "elsewhere"))
    assert dataset_for(card).path == elsewhere
    # a recorded location that is gone is listed among the places looked in
    monkeypatch.delenv("CNNDEPLOY_DATA")
    with pytest.raises(DatasetError) as info:
        dataset_for(_card(name, tmp_path / "gone"))
    assert f"recorded in model.json: {tmp_path / 'gone'}" in str(info.value)


def test_dataset_for_an_onnx_card_uses_its_run_directorys_model_json(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNDEPLOY_DATA", raising=False)
    monkeypatch.setenv("CNNDEPLOY_CACHE", str(tmp_path / "cache"))
    recorded = _recorded_dataset("mnist", tmp_path / "trained-on")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({**_card("mnist", recorded).to_json(), "widths": {}}))
    onnx_card = _card("mnist", None)   # ONNX metadata carries no local path
    assert dataset_for(onnx_card, run_dir=run).path == recorded
    with pytest.raises(DatasetError, match="not found"):
        dataset_for(onnx_card, run_dir=tmp_path)   # no model.json there: nothing recorded


def test_unknown_dataset_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as info:
        load_dataset("imagenet")
    assert "'mnist'" in str(info.value) and "'cifar10'" in str(info.value)


def test_cnndeploy_data_env_is_used(tmp_path, monkeypatch):
    arrays = write_tiny_mnist(tmp_path / "env" / "mnist")
    monkeypatch.setenv("CNNDEPLOY_DATA", str(tmp_path / "env"))
    ds = load_dataset("mnist")
    assert_mnist_matches(ds, arrays)
    assert Path(ds.path) == (tmp_path / "env" / "mnist").resolve()


# ---------------------------------------------------------------- download

def _file_mirror(tmp_path, monkeypatch, wrong_md5_for: str | None = None):
    """Serve tiny IDX .gz files from a file:// mirror; returns the arrays they hold."""
    mirror = tmp_path / "mirror"
    arrays = write_tiny_mnist(mirror)
    files = [(p.name, hashlib.md5(p.read_bytes()).hexdigest()) for p in sorted(mirror.iterdir())]
    files = [(name, "0" * 32 if name == wrong_md5_for else md5) for name, md5 in files]
    monkeypatch.setitem(download.SOURCES, "mnist",
                        {"subdir": "mnist", "mirrors": [mirror.as_uri() + "/"], "files": files})
    monkeypatch.setenv("CNNDEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNDEPLOY_DATA", raising=False)
    return arrays


def test_download_mnist(tmp_path, monkeypatch):
    arrays = _file_mirror(tmp_path, monkeypatch)
    ds = load_dataset("mnist", data_dir=tmp_path / "data", download=True)
    assert_mnist_matches(ds, arrays)
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == \
        sorted(stem + ".gz" for stem in MNIST_FILES.values())


def test_download_checksum_mismatch_keeps_nothing(tmp_path, monkeypatch):
    bad = "t10k-images-idx3-ubyte.gz"
    _file_mirror(tmp_path, monkeypatch, wrong_md5_for=bad)
    with pytest.raises(DatasetError, match="checksum"):
        load_dataset("mnist", data_dir=tmp_path / "data", download=True)
    folder = tmp_path / "data" / "mnist"
    assert not (folder / bad).exists()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


# ---------------------------------------------------------------- device batches and augmentation

def _images(n, c=2, h=5, w=6, seed=0) -> torch.Tensor:
    """Pixels 1..255, so that the zero padding can never be mistaken for image content."""
    return torch.randint(1, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def test_random_crop_is_a_window_of_the_padded_image():
    x, pad = _images(32), 2
    out = random_crop(x, pad, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if torch.equal(out[i], padded[i, :, dy:dy + 5, dx:dx + 6])]
        assert hits, f"sample {i} is not a window of its padded image"
        offsets.update(hits)
    assert any(dy != dx for dy, dx in offsets)   # rows and columns are offset independently


def test_random_flip_flips_whole_samples_on_the_last_axis():
    x = _images(64)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def _split(n=10):
    return DeviceSplit(_images(n, c=3, h=4, w=4).numpy(), np.arange(n), mean=(0.1, 0.2, 0.3),
                       std=(0.5, 0.6, 0.7), device=torch.device("cpu"))


def test_batches_in_order_are_normalised():
    split = _split()
    batches = list(split.batches(4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([b for b, _ in batches]).numpy()
    y = torch.cat([t for _, t in batches]).numpy()
    np.testing.assert_array_equal(y, np.arange(10))
    mean, std = np.array([0.1, 0.2, 0.3])[:, None, None], np.array([0.5, 0.6, 0.7])[:, None, None]
    want = (split.x.numpy().astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)


def test_shuffled_batches_cover_each_index_once_and_repeat_with_the_seed():
    split, augment = _split(), Augment(pad=1, flip=True)

    def epoch(seed, drop_last=False):
        return list(split.batches(3, generator=torch.Generator().manual_seed(seed),
                                  augment=augment, drop_last=drop_last))

    first = epoch(0)
    assert [len(y) for _, y in first] == [3, 3, 3, 1]
    labels = torch.cat([y for _, y in first])
    assert sorted(labels.tolist()) == list(range(10))
    assert labels.tolist() != list(range(10))            # actually shuffled
    for (xa, ya), (xb, yb) in zip(first, epoch(0)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert [len(y) for _, y in epoch(0, drop_last=True)] == [3, 3, 3]


def test_hostile_members_are_skipped_unread_or_undecoded(tmp_path, caplog, monkeypatch):
    """Big files are never read, pixel bombs never decoded, and no EPS goes to Ghostscript."""
    import cnndeploy.data.folder as folder

    write_image_tree(tmp_path / "src")
    members = tree_members(tmp_path / "src")
    monkeypatch.setattr(folder, "MAX_FILE_BYTES", 1 << 20)
    members["train/dog/huge.png"] = b"\0" * (2 << 20)                      # over the (patched) size cap
    bomb = io.BytesIO()
    Image.new("L", (5000, 5000)).save(bomb, "PNG")                          # 25 Mpx > 4096^2
    members["train/cat/bomb.png"] = bomb.getvalue()
    members["train/cat/eps.png"] = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
    archive = make_archive(tmp_path / "hostile.zip", members)
    with caplog.at_level(logging.WARNING, logger="cnndeploy"):
        ds = load_dataset(str(archive), use_cache=False)
    assert len(ds.train_y) == 6 and ds.train_x.shape[1:] == (3, 8, 8)
    text = caplog.text
    assert "skipped 1 file(s): larger than 1 MB" in text
    assert "skipped 2 file(s): corrupt or unreadable image" in text
