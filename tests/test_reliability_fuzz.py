"""Property-based fuzzing: readers and preprocessing raise only our own errors.

Bounded (a few hundred examples each, no deadline) so the file stays fast on 2 cores; the seed
is hypothesis' own (derandomize in CI is not needed: any failure prints its reproducer).
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")   # in the 'dev' extra
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402
from PIL import Image  # noqa: E402

from cnndeploy.data.cifar import _batch_arrays, unpickle_batch  # noqa: E402
from cnndeploy.data.mnist import read_idx  # noqa: E402
from cnndeploy.errors import CnnDeployError, DatasetError  # noqa: E402
from cnndeploy.serve.runtime import Classifier, ImageInputError  # noqa: E402

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None)


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> list[Classifier]:
    from test_reliability import tiny_onnx

    root = tmp_path_factory.mktemp("fuzz")
    return [Classifier(tiny_onnx(root / "grey.onnx")), Classifier(tiny_onnx(root / "rgb.onnx", channels=3))]


def _idx_bytes(draw_dims: tuple[int, ...], body: bytes) -> bytes:
    return bytes([0, 0, 8, len(draw_dims)]) + struct.pack(f">{len(draw_dims)}I", *draw_dims) + body


idx_like = st.one_of(
    st.binary(max_size=64),                                               # anything at all
    st.builds(_idx_bytes, st.lists(st.integers(0, 2 ** 32 - 1), min_size=0, max_size=6).map(tuple),
              st.binary(max_size=64)),                                    # a plausible header, any body
    st.builds(_idx_bytes, st.lists(st.integers(0, 4), min_size=1, max_size=3).map(tuple),
              st.binary(max_size=80)),                                    # small dims, often exact
)


@FUZZ
@given(raw=idx_like, gz=st.booleans(), cut=st.integers(0, 40))
def test_idx_reader_raises_only_dataset_errors(raw, gz, cut):
    data = gzip.compress(raw, mtime=0) if gz else raw
    if gz and cut:
        data = data[:-cut]                                                # truncated gzip streams too
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("x-idx.gz" if gz else "x-idx")
        path.write_bytes(data)
        try:
            arr = read_idx(path)
        except DatasetError as e:
            assert str(path) in str(e)
            return
    assert arr.dtype == np.uint8 and arr.size == len(raw) - 4 - 4 * raw[3]


DTYPES = [np.uint8, np.int8, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_,
          np.complex64]
arrays = st.sampled_from(DTYPES).flatmap(lambda dt: hnp.arrays(
    dt, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=7)))


@FUZZ
@given(arr=arrays)
def test_preprocess_of_any_array(classifiers, arr):
    for clf in classifiers:
        try:
            x = clf.preprocess(arr)
        except ImageInputError:
            continue
        assert x.shape == (clf.meta["channels"], 28, 28) and x.dtype == np.float32
        assert np.isfinite(x).all()


def _encoded(fmt: str, mode: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(size[0] * 31 + size[1])
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    img.save(buf, format=fmt)
    return buf.getvalue()


images = st.builds(_encoded, st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]),
                   st.sampled_from(["RGB", "L"]), st.tuples(st.integers(1, 40), st.integers(1, 40)))


@st.composite
def damaged_images(draw) -> bytes:
    data = bytearray(draw(images))
    for _ in range(draw(st.integers(0, 6))):                              # flip a few bytes
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(1, len(data)))])                # and maybe truncate


@pytest.mark.filterwarnings("ignore::UserWarning")   # Pillow's own notes on the damaged files
@FUZZ
@given(data=st.one_of(st.binary(max_size=256), damaged_images()),
       suffix=st.sampled_from([".png", ".jpg", ".gif"]))
def test_preprocess_of_any_file(classifiers, data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        for clf in classifiers:
            try:
                x = clf.preprocess(path)
            except ImageInputError as e:
                assert str(path) in str(e)
                continue
            assert x.shape == (clf.meta["channels"], 28, 28) and np.isfinite(x).all()


values = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.binary(max_size=8)
                      | st.text(max_size=4)
                      | hnp.arrays(st.sampled_from([np.uint8, np.int64, np.float32]),
                                   st.sampled_from([(0,), (2, 3072), (1, 3072), (3,), (2, 2)])),
                      lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner), max_leaves=6)


@FUZZ
@given(batch=st.dictionaries(st.sampled_from([b"data", b"labels", "data", "labels", b"x"]), values, max_size=3)
       | values, protocol=st.integers(2, 5), cut=st.integers(0, 3))
def test_cifar_batches_raise_only_dataset_errors(batch, protocol, cut):
    data = pickle.dumps(batch, protocol=protocol)
    data = data[: len(data) - cut]
    try:
        x, y = _batch_arrays(unpickle_batch(data, "fuzz"), "fuzz")
    except CnnDeployError as e:
        assert isinstance(e, DatasetError) and str(e).startswith("fuzz")
        return
    assert x.shape[1:] == (3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64 and len(x) == len(y)
