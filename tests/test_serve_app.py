"""The Gradio demo against a live server on 127.0.0.1, driven by gradio_client (and httpx for raw uploads)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the demo extra is not installed: pip install 'cnndeploy[demo]'")
gradio_client = pytest.importorskip("gradio_client")

import httpx  # noqa: E402  (a gradio dependency)
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

import servekit  # noqa: E402
from cnndeploy.serve import inputs, tables  # noqa: E402
from cnndeploy.serve.app import INTERNAL, Demo, build_blocks, is_loopback, launch  # noqa: E402
from cnndeploy.serve.lineup import ServeError, load_groups  # noqa: E402
from cnndeploy.serve.runtime import Classifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mini_mnist) -> servekit.Runs:
    return servekit.trained_runs(tmp_path_factory.getbasetemp() / "serve-runs", mini_mnist, servekit.shared_datasets())


@pytest.fixture(scope="module")
def demo(runs) -> Demo:
    return Demo(runs.all, max_file_size=servekit.MAX_FILE_SIZE, concurrency=2)


@pytest.fixture(scope="module")
def server(demo):
    blocks = build_blocks(demo, max_queue=16, concurrency=2)
    url = launch(blocks, port=servekit.free_port(), max_file_size=servekit.MAX_FILE_SIZE,
                 prevent_thread_lock=True, quiet=True)
    yield blocks, url
    blocks.close()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server[1], verbose=False)


def _classify(client: Client, path: Path | str) -> dict:
    return client.predict(handle_file(str(path)), api_name="/classify")


def _assert_friendly(excinfo: pytest.ExceptionInfo, message: str) -> None:
    text = str(excinfo.value)
    assert text == message
    assert "Traceback" not in text and "/" not in text  # no stack, no path


def test_mnist_digit_answered_by_every_variant(client, runs):
    result = _classify(client, servekit.mnist_example(7))
    mnist = {k: v for k, v in result.items() if v["dataset"] == "mnist"}
    assert set(mnist) == {"lenet5-mnist:fp32@ort", "lenet5-mnist:fp32@torch", "lenet5-mnist:int8-cpu@ort",
                          "lenet5-mnist-always0:fp32@ort", *servekit.on_openvino("lenet5-mnist", "fp32", "int8-cpu"),
                          *servekit.on_openvino("lenet5-mnist-always0", "fp32")}
    fp32 = mnist["lenet5-mnist:fp32@ort"]
    assert fp32["labels"][0] == "7" and fp32["agrees_with_fp32"] is None  # it is the reference
    for name, a in mnist.items():
        assert len(a["labels"]) == 3 and len(set(a["labels"])) == 3
        assert a["probabilities"] == sorted(a["probabilities"], reverse=True) and sum(a["probabilities"]) <= 1.0001
        assert 0 < a["latency_ms"] < 5_000
    # torch and onnxruntime run the same FP32 weights: same answer; INT8 agrees on a clear digit.
    assert mnist["lenet5-mnist:fp32@torch"]["labels"] == fp32["labels"]
    assert np.allclose(mnist["lenet5-mnist:fp32@torch"]["probabilities"], fp32["probabilities"], atol=1e-4)
    assert mnist["lenet5-mnist:int8-cpu@ort"]["agrees_with_fp32"] is True
    for name in servekit.on_openvino("lenet5-mnist", "fp32", "int8-cpu"):   # compared with FP32 on onnxruntime
        assert mnist[name]["compared_with"] == "lenet5-mnist:fp32@ort" and mnist[name]["agrees_with_fp32"] is True
    broken = mnist["lenet5-mnist-always0:fp32@ort"]
    assert broken["labels"][0] == "0" and broken["agrees_with_fp32"] is False
    assert broken["compared_with"] == "lenet5-mnist:fp32@ort"  # its parent from prune.json


def test_black_on_white_digit_is_inverted(client, tmp_path):
    src = servekit.mnist_example(2)
    inverted = tmp_path / "two-on-white.png"
    Image.eval(Image.open(src).convert("L"), lambda v: 255 - v).save(inverted)
    plain, flipped = _classify(client, src), _classify(client, inverted)
    assert flipped["lenet5-mnist:fp32@ort"]["labels"] == plain["lenet5-mnist:fp32@ort"]["labels"]
    assert flipped["lenet5-mnist:fp32@ort"]["labels"][0] == "2"


def test_cifar_image_labels(client, runs):
    if runs.cifar is None:
        pytest.skip("CIFAR-10 archive not found (set CNNDEPLOY_DATA)")
    local = Classifier(runs.cifar / "model.onnx")
    # The tiny model is right on some shipped test images only: check labels on those it gets right.
    right = [(p, label) for p, label in servekit.cifar_examples() if local.classify(p)[0][0] == label]
    assert len(right) >= 4, "the CIFAR-10 fixture model should beat chance on the 30 shipped images"
    path, label = right[0]
    result = _classify(client, path)
    cifar = {k: v for k, v in result.items() if v["dataset"] == "cifar10"}
    assert set(cifar) == {"lenet5-cifar10:fp32@ort", "lenet5-cifar10:fp32@torch", "lenet5-cifar10:int8-cpu@ort",
                          *servekit.on_openvino("lenet5-cifar10", "fp32", "int8-cpu")}
    fp32 = cifar["lenet5-cifar10:fp32@ort"]
    assert fp32["labels"][0] == label
    assert fp32["labels"] == [lbl for lbl, _ in local.classify(path)]
    assert all(set(a["labels"]) <= set(servekit.CLASSES) for a in cifar.values())


@pytest.mark.parametrize("kind", ["corrupt", "random-bytes", "truncated", "not-an-image", "svg", "html", "bomb",
                                  "too-many-pixels"])
def test_bad_files_get_one_friendly_message_and_the_server_goes_on(client, tmp_path, kind):
    payloads = {"corrupt": ("x.png", b"\x89PNG\r\n\x1a\n" + os.urandom(200), inputs.NOT_AN_IMAGE),
                "truncated": ("x.jpg", servekit.truncated_jpeg(), inputs.NOT_AN_IMAGE),
                "random-bytes": ("x.png", os.urandom(300), inputs.NOT_AN_IMAGE),
                "not-an-image": ("x.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", inputs.NOT_AN_IMAGE),
                "svg": ("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28">'
                                 b'<circle cx="14" cy="14" r="9"/></svg>', inputs.NOT_AN_IMAGE),
                "html": ("x.html", b"<!doctype html><html><body><script>alert(1)</script></body></html>",
                         inputs.NOT_AN_IMAGE),
                "bomb": ("x.png", servekit.bomb_png(20000, 20000), inputs.TOO_MANY_PIXELS),
                "too-many-pixels": ("x.png", servekit.bomb_png(5000, 5000), inputs.TOO_MANY_PIXELS)}
    name, data, message = payloads[kind]
    bad = tmp_path / name
    bad.write_bytes(data)
    with pytest.raises(AppError) as excinfo:
        _classify(client, bad)
    _assert_friendly(excinfo, message)
    assert _classify(client, servekit.mnist_example(7))["lenet5-mnist:fp32@ort"]["labels"][0] == "7"


def test_oversized_upload_is_refused(client, server, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(servekit.oversized_png(servekit.MAX_FILE_SIZE))
    with pytest.raises(ValueError, match="exceeds the maximum file size of 200000 bytes"):
        _classify(client, big)  # gradio_client reads the limit from the server's config
    # A client that ignores the limit is refused by the server itself.
    with big.open("rb") as f:
        r = httpx.post(f"{server[1]}gradio_api/upload", files={"files": ("big.png", f, "image/png")})
    assert r.status_code == 413 and "maximum allowed size of 200000 bytes" in r.text
    assert _classify(client, servekit.mnist_example(7))["lenet5-mnist:fp32@ort"]["labels"][0] == "7"


def test_inline_image_over_the_limit_is_refused(demo):
    """A data: URL never meets the upload limit, so the component applies it itself."""
    import base64

    import gradio as gr
    from gradio.data_classes import ImageData

    from cnndeploy.serve.components import upload_image

    component = upload_image(max_file_size=1000, render=False)
    url = "data:image/png;base64," + base64.b64encode(servekit.oversized_png(2000)).decode()
    with pytest.raises(gr.Error) as excinfo:
        component.preprocess(ImageData(url=url))
    assert excinfo.value.message == inputs.too_large(1000)
    small = "data:image/png;base64," + base64.b64encode(servekit.mnist_example(7).read_bytes()).decode()
    assert component.preprocess(ImageData(url=small)).size == (28, 28)


def test_unexpected_failure_is_reported_without_details(client, demo, monkeypatch):
    member = demo.groups[0].members[0]

    def broken(batch):
        raise RuntimeError(f"secret details from {demo.files}")
    monkeypatch.setattr(member, "logits", broken)
    with pytest.raises(AppError) as excinfo:
        _classify(client, servekit.mnist_example(7))
    _assert_friendly(excinfo, INTERNAL)
    monkeypatch.undo()
    assert _classify(client, servekit.mnist_example(7))["lenet5-mnist:fp32@ort"]["labels"][0] == "7"


def test_no_local_path_reaches_the_browser(server, runs, demo):
    blocks, url = server
    page = httpx.get(url).text + httpx.get(f"{url}config").text
    for local in [*map(str, runs.all), str(REPO), str(demo.files), str(Path(inputs.__file__).parent)]:
        assert local not in page
    # Only Gradio's own cache is served: not the run directories, not the working directory.
    for target in (runs.mnist / "model.onnx", REPO / "README.md"):
        assert httpx.get(f"{url}gradio_api/file={target}").status_code == 403
    # Relative and encoded traversal out of the served set (RELIABILITY.md, case 22).
    for target in ("../../../../etc/passwd", "..%2f..%2f..%2f..%2fetc%2fpasswd", "%2e%2e/%2e%2e/etc/passwd",
                   "..%252f..%252fetc%252fpasswd", f"/tmp/gradio/../../{REPO.name}/README.md"):
        response = httpx.get(f"{url}gradio_api/file={target}")
        assert response.status_code in (403, 404) and "root:" not in response.text


def test_a_burst_past_the_queue_gets_queue_full_and_the_server_stays_up(runs, monkeypatch):
    """RELIABILITY.md, case 21: with 1 request at a time and 2 waiting, a burst of 10 is partly refused."""
    import threading
    import time

    from gradio_client.utils import QueueError

    demo = Demo(runs.all, max_file_size=servekit.MAX_FILE_SIZE, concurrency=1)
    release = threading.Event()
    real = demo.api_classify
    monkeypatch.setattr(demo, "api_classify", lambda image: (release.wait(10), real(image))[1])  # held busy
    blocks = build_blocks(demo, max_queue=2, concurrency=1)
    url = launch(blocks, port=servekit.free_port(), max_file_size=servekit.MAX_FILE_SIZE,
                 prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        jobs = [client.submit(handle_file(str(servekit.mnist_example(7))), api_name="/classify") for _ in range(10)]
        time.sleep(3)          # every job has reached the server: 1 running, 2 waiting, the rest refused
        release.set()
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(job.result(timeout=60)["lenet5-mnist:fp32@ort"]["labels"][0])
            except QueueError as e:
                outcomes.append(str(e))
        assert outcomes.count("7") >= 1 and any("Queue is full" in o for o in outcomes), outcomes
        assert set(outcomes) <= {"7", "Queue is full! Please try again."}
        assert _classify(client, servekit.mnist_example(7))["lenet5-mnist:fp32@ort"]["labels"][0] == "7"
    finally:
        release.set()
        blocks.close()


def test_limits_and_loopback_defaults(server):
    blocks, url = server
    assert url.startswith("http://127.0.0.1:")
    assert blocks._queue.max_size == 16 and blocks._queue.default_concurrency_limit == 2
    assert blocks.show_error is False and blocks.share is False and blocks.share_url is None
    assert blocks.max_file_size == servekit.MAX_FILE_SIZE
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")


def test_models_table_and_downloads(demo, runs):
    rows = {(r[0], r[1]): r for r in tables.model_rows([runs.mnist])}
    metrics = json.loads((runs.mnist / "metrics.json").read_text())
    quant = json.loads((runs.mnist / "quant.json").read_text())["model.int8-cpu.onnx"]
    fp32 = rows[("lenet5-mnist:fp32", "model.onnx")]
    int8 = rows[("lenet5-mnist:int8-cpu", "model.int8-cpu.onnx")]
    assert fp32[3] == round(100 * metrics["test_accuracy"], 2) and int8[3] == round(100 * quant["int8_accuracy"], 2)
    assert fp32[5] == int8[5] == metrics["params"] and fp32[6] > fp32[5]  # MACs exceed params for a CNN
    assert int8[2] < fp32[2]
    names = sorted(p.name for p in demo.downloads)
    assert "lenet5-mnist.model.int8-cpu.onnx" in names and "lenet5-mnist-always0.model.onnx" in names
    assert (demo.files / "onnx" / "lenet5-mnist.model.onnx").read_bytes() == (runs.mnist / "model.onnx").read_bytes()


def test_bench_rows_are_read_from_bench_json(runs, tmp_path):
    bench = runs.mnist.parent / "bench"
    bench.mkdir(exist_ok=True)
    rows = [{"variant": "lenet5-mnist:fp32", "run": "lenet5-mnist", "backend": "ort", "batch_size": 1, "accuracy": 0.9, "latency_ms_p50": 0.1,
             "latency_ms_p99": 0.3, "throughput_ips": 9000.0, "size_bytes": 265000, "slower_than_parent": None,
             "status": "ok"},
            {"variant": "someone-else:fp32", "run": "someone-else", "backend": "ort", "batch_size": 1,
             "status": "ok"}]
    (bench / "bench.json").write_text(json.dumps({"environment": {}, "rows": rows}))
    try:
        found = tables.find_bench([runs.mnist])
        assert found == [(bench / "bench.json").resolve()]
        kept = tables.read_bench(found[0], {"lenet5-mnist"})
        assert [r["variant"] for r in kept] == ["lenet5-mnist:fp32"]  # only the served runs' rows
        assert tables.bench_table(kept)[0][:6] == ["lenet5-mnist:fp32", "ort", 1, 90.0, 0.1, 0.3]
    finally:
        (bench / "bench.json").unlink()
    (tmp_path / "bench.json").write_text("{not json")
    assert tables.read_bench(tmp_path / "bench.json", {"lenet5-mnist"}) == []


def test_quick_bench_button_measures_the_runs(runs):
    demo = Demo([runs.mnist], max_file_size=servekit.MAX_FILE_SIZE, concurrency=1)
    note, rows, plots = demo.run_quick_bench()
    ok = [r for r in rows if r[-1] == "ok"]
    assert {(r[0], r[1], r[2]) for r in ok} >= {("lenet5-mnist:fp32", "ort", 1), ("lenet5-mnist:int8-cpu", "ort", 32)}
    assert all(r[3] is not None and r[4] > 0 for r in ok)
    assert [caption for _, caption in plots] == [c for _, c in tables.PLOTS]
    assert "quick bench" in note


def test_digit_helpers():
    digit = Image.open(servekit.mnist_example(7)).convert("L")
    on_white = Image.eval(digit, lambda v: 255 - v)
    assert np.array_equal(np.asarray(inputs.as_mnist_digit(on_white)), np.asarray(digit))
    assert np.array_equal(np.asarray(inputs.as_mnist_digit(digit)), np.asarray(digit))  # already MNIST-like
    pad = Image.new("L", (280, 280), 0)
    pad.paste(255, (10, 10, 30, 90))  # a small stroke in the corner of a big pad
    centred = np.asarray(inputs.centre_digit(pad), dtype=np.float64)
    ys, xs = np.nonzero(centred)
    assert centred.shape == (28, 28) and ys.max() - ys.min() + 1 == 20
    assert abs((centred.sum(1) * np.arange(28)).sum() / centred.sum() - 14) <= 1
    with pytest.raises(inputs.UserInputError, match="empty"):
        inputs.centre_digit(Image.new("L", (280, 280), 0))


def test_run_without_onnx_is_refused(runs, tmp_path):
    (tmp_path / "model.json").write_bytes((runs.mnist / "model.json").read_bytes())
    with pytest.raises(ServeError, match="export"):
        load_groups([tmp_path])


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_any_decodable_mode_is_classified(demo, mode):
    """TIFF keeps every one of these modes; each must reach every variant of every group."""
    import io

    from cnndeploy.serve.lineup import classify

    img = Image.new(mode, (40, 30)) if mode == "I;16" else Image.new("RGB", (40, 30), (200, 30, 60)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="TIFF")
    decoded = inputs.decode(buf.getvalue())
    for group in demo.groups:
        view, answers = classify(group, decoded)
        assert view.size[0] >= 28 and len(answers) == len(group.members)


def test_cli_serve_reports_a_busy_port(runs, capsys):
    from cnndeploy.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = main(["serve", str(runs.mnist), "--port", str(busy.getsockname()[1])])
    assert code == 2 and "cannot listen on 127.0.0.1:" in capsys.readouterr().err


def test_launch_says_where_the_demo_is_in_our_words_without_gradios_hint_or_http_lines(demo, capsys, caplog):
    """Gradio's "set `share=True` in `launch()`" is for Python callers (ours is --share), and its
    start-up self-checks through httpx would log an "HTTP Request:" line each."""
    import logging

    httpx_log = logging.getLogger("httpx")
    level = httpx_log.level
    httpx_log.setLevel(logging.NOTSET)  # as in a fresh `cnndeploy serve` process
    blocks = build_blocks(demo, max_queue=4, concurrency=1)
    try:
        with caplog.at_level(logging.INFO):
            url = launch(blocks, port=servekit.free_port(), max_file_size=servekit.MAX_FILE_SIZE,
                         prevent_thread_lock=True)
    finally:
        blocks.close()
        httpx_log.setLevel(level)
    printed = capsys.readouterr()
    assert "share=True" not in printed.out + printed.err and "Running on local URL" not in printed.out
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if m.startswith("HTTP Request:")], messages
    assert f"demo on {url} (--share adds a public link)" in messages


def _stored(root: Path, name: str, data: bytes) -> str:
    """A file where Gradio's /upload route puts one: <upload folder>/<content hash>/<name>."""
    import hashlib

    path = root / hashlib.sha256(data + name.encode()).hexdigest() / name
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return str(path)


def test_uploads_are_deleted_once_read_and_nothing_else_is(tmp_path, monkeypatch):
    import gradio as gr
    from gradio.data_classes import ImageData

    from cnndeploy.serve.components import UploadReader, upload_image

    root = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(root))
    digit = servekit.mnist_example(7).read_bytes()
    good, bad, big = (_stored(root, "a.png", digit), _stored(root, "b.png", b"not an image"),
                      _stored(root, "big.png", servekit.oversized_png(2000)))
    example = _stored(root, "example.png", digit)   # cached by Gradio, never uploaded
    own = tmp_path / "mine.png"                       # a Python caller's own file
    own.write_bytes(digit)
    uploads = {good, bad, big, str(own)}
    component = upload_image(max_file_size=1000 + len(digit), uploads=lambda: uploads, render=False)
    assert component.preprocess(ImageData(path=good)).size == (28, 28)
    assert not Path(good).exists() and not Path(good).parent.exists()
    for path, message in ((bad, inputs.NOT_AN_IMAGE), (big, inputs.too_large(1000 + len(digit)))):
        with pytest.raises(gr.Error) as excinfo:   # refused ones are deleted too
            component.preprocess(ImageData(path=path))
        assert excinfo.value.message == message and not Path(path).exists()
    for path in (example, str(own)):
        assert component.preprocess(ImageData(path=path)).size == (28, 28)
        assert Path(path).read_bytes() == digit
    assert uploads == {str(own)} and sorted(p.name for p in root.rglob("*.png")) == ["example.png"]
    # Identical uploads share a path: a request still queued for it is answered from memory for a while ...
    assert component.preprocess(ImageData(path=good)).size == (28, 28)
    monkeypatch.setattr(UploadReader, "KEEP_SECONDS", 0.0)
    with pytest.raises(gr.Error) as excinfo:   # ... and then told to upload again
        component.preprocess(ImageData(path=good))
    assert excinfo.value.message == inputs.UPLOAD_GONE


def test_an_upload_is_gone_from_gradios_cache_once_classified(client, tmp_path):
    import time

    from gradio.utils import get_upload_folder

    stamp = f"{os.getpid()}-{time.time_ns()}"
    mine, bad = tmp_path / f"digit-{stamp}.png", tmp_path / f"bad-{stamp}.png"
    mine.write_bytes(servekit.mnist_example(7).read_bytes())
    bad.write_bytes(os.urandom(300))
    assert _classify(client, mine)["lenet5-mnist:fp32@ort"]["labels"][0] == "7"
    with pytest.raises(AppError):
        _classify(client, bad)
    cache = Path(get_upload_folder())
    assert not list(cache.glob(f"*/{mine.name}")) and not list(cache.glob(f"*/{bad.name}"))
    assert mine.is_file() and bad.is_file()   # the visitor's own copies are not the server's to delete


def test_the_cache_backstop_ages_out_uploads_but_keeps_examples_and_downloads(demo, tmp_path):
    import gradio as gr
    from gradio.route_utils import delete_files_created_by_app

    from cnndeploy.serve.app import DELETE_CACHE

    blocks = build_blocks(demo)
    assert blocks.delete_cache == DELETE_CACHE
    kept = [s["path"] for c in blocks.blocks.values() if isinstance(c, gr.Dataset)
            for sample in c.samples for s in sample if isinstance(s, dict)]
    kept += [f["path"] for c in blocks.blocks.values() if isinstance(c, gr.File) for f in c.value or []]
    assert len(kept) >= 10 and any(p.endswith(".onnx") for p in kept)
    abandoned = _stored(Path(blocks.GRADIO_CACHE), f"never-classified-{os.getpid()}.png", b"x" * 100)
    blocks.upload_file_set.add(abandoned)   # uploaded, but no request ever read it
    delete_files_created_by_app(blocks, None)   # what delete_cache runs, here with every age
    assert not Path(abandoned).exists()
    assert all(Path(p).is_file() for p in kept)
