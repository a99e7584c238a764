"""The demo in a real browser: Playwright driving Debian's headless Chromium against 127.0.0.1.

Skipped only where /usr/bin/chromium is absent (`.ci/run` installs it, so CI runs these).
The page may not reach anything but the demo's own server: every other request is aborted
and recorded, and the tests assert there were none.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} not found (apt-get install chromium)")]
pytest.importorskip("gradio", reason="the demo extra is not installed: pip install 'cnndeploy[demo]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")

import servekit  # noqa: E402
from cnndeploy.serve import inputs  # noqa: E402
from cnndeploy.serve.app import Demo, build_blocks, launch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("CNNDEPLOY_TEST_ARTIFACTS") or REPO / "results" / "tmp" / "test-artifacts")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mini_mnist) -> servekit.Runs:
    return servekit.trained_runs(tmp_path_factory.getbasetemp() / "serve-runs", mini_mnist, servekit.shared_datasets())


@pytest.fixture(scope="module")
def url(runs):
    demo = Demo(runs.all, max_file_size=servekit.MAX_FILE_SIZE, concurrency=2)
    blocks = build_blocks(demo, max_queue=16, concurrency=2)
    yield launch(blocks, port=servekit.free_port(), max_file_size=servekit.MAX_FILE_SIZE,
                 prevent_thread_lock=True, quiet=True)
    blocks.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, url):
    """A fresh page on the demo; requests to anywhere but the demo are aborted and must not happen."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    elsewhere: list[str] = []

    def only_the_demo(route):
        if route.request.url.startswith(url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()
    page.route("**/*", only_the_demo)
    page.goto(url)
    yield page
    page.close()
    assert elsewhere == [], f"the page tried to reach other hosts: {elsewhere}"


def _rows(page) -> list[dict[str, str]]:
    """The predictions table as read from the page: one dict per variant row."""
    page.locator("#predictions-0 table.cnd-predictions tbody tr").first.wait_for(timeout=30_000)
    out = []
    for row in page.locator("#predictions-0 tbody tr").all():
        cells = row.locator("td").all_inner_texts()
        out.append({"variant": cells[0], "backend": cells[1], "top1": cells[2].split()[0], "verdict": cells[6],
                    "class": row.get_attribute("class") or ""})
    return out


def _upload(page, path: Path) -> None:
    page.get_by_role("tab", name="Upload").first.click()
    page.locator("#upload-0 input[type=file]").set_input_files(str(path))
    page.locator("#upload-0 img").first.wait_for(timeout=15_000)  # the preview: the upload has landed
    page.locator("#classify-0").click()


def test_upload_and_read_predictions(page):
    _upload(page, servekit.mnist_example(3))
    rows = {(r["variant"], r["backend"]): r for r in _rows(page)}
    reference = rows[("lenet5-mnist:fp32", "ort")]
    assert reference["top1"] == "3" and reference["verdict"] == "reference"
    assert rows[("lenet5-mnist:int8-cpu", "ort")]["top1"] == "3"
    broken = rows[("lenet5-mnist-always0:fp32", "ort")]
    assert broken["top1"] == "0" and "cnd-disagree" in broken["class"]  # highlighted
    assert "disagree" in page.locator("#predictions-0 .cnd-note").inner_text()
    assert page.locator("#view-0 img").first.get_attribute("src")  # the 28×28 input is shown
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "serve-browser-classify.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_drawn_digit(page):
    page.locator("#pad-0 button[aria-label='Brush']").first.click()
    canvas = page.locator("#pad-0 canvas").first.bounding_box()
    x, top, height = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] * 0.2, canvas["height"] * 0.6
    page.mouse.move(x, top)
    page.mouse.down()
    for i in range(1, 21):  # a vertical stroke: a "1"
        page.mouse.move(x, top + height * i / 20)
    page.mouse.up()
    page.locator("#classify-drawing-0").click()
    rows = {(r["variant"], r["backend"]): r for r in _rows(page)}
    assert rows[("lenet5-mnist:fp32", "ort")]["top1"] == "1"


def test_corrupt_upload_shows_the_friendly_message(page, tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    page.get_by_role("tab", name="Upload").first.click()
    page.locator("#upload-0 input[type=file]").set_input_files(str(bad))
    page.locator("#classify-0").click()
    toast = page.get_by_text(inputs.NOT_AN_IMAGE)
    toast.first.wait_for(timeout=15_000)
    body = page.content()
    assert "Traceback" not in body and "/tmp/pytest" not in body
    page.locator("#upload-0 button[aria-label='Remove Image']").first.click()
    _upload(page, servekit.mnist_example(7))  # the page goes on working
    assert {r["variant"]: r["top1"] for r in _rows(page) if r["backend"] == "ort"}["lenet5-mnist:fp32"] == "7"


def test_cifar_example_gallery(page, runs):
    if runs.cifar is None:
        pytest.skip("CIFAR-10 archive not found (set CNNDEPLOY_DATA)")
    page.get_by_role("tab", name="CIFAR-10").click()
    page.locator("img[src*='ship_0000']").first.click()  # a shipped test image, from the examples gallery
    page.locator("#predictions-1 tbody tr").first.wait_for(timeout=30_000)
    rows = page.locator("#predictions-1 tbody tr").all()
    # fp32 on onnxruntime and torch, int8-cpu, and OpenVINO's members where it is installed
    assert len(rows) == 3 + len(servekit.on_openvino("lenet5-cifar10", "fp32", "int8-cpu"))
    for row in rows:
        assert row.locator("td").nth(2).inner_text().split()[0] in servekit.CLASSES
    assert "32×32" in page.locator("#view-1").inner_text()
