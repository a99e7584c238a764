"""`cnndeploy serve`: a Gradio demo where every variant of the run directories answers the same image.

Tabs: Classify (drawing pad / upload / examples, every variant's top-3 and latency, disagreement
with FP32 highlighted, the picture the models saw), Benchmark (bench.json rows and plots, or a
quick bench on demand), Models (size, accuracy, parameters/MACs, ONNX downloads). One API
endpoint, `classify`, for gradio_client.

Safety: visitors' files are decoded by `serve.inputs` only; every error they can cause is a
gr.Error with a fixed text, and anything else is logged here and reported without details
(`show_error=False`), so neither tracebacks nor local paths reach the browser.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from cnndeploy.images import MAX_PIXELS
from cnndeploy.serve import tables
from cnndeploy.serve.inputs import EMPTY_DRAWING, NO_IMAGE, NOT_AN_IMAGE, UserInputError
from cnndeploy.serve.lineup import Group, ServeError, classify, default_threads, load_groups
from cnndeploy.runtime.classifier import ImageInputError

log = logging.getLogger(__name__)
EXAMPLES = Path(__file__).parent / "examples"
DELETE_CACHE = (600, 3600)  # every 10 minutes, delete the demo's cached files older than an hour
INTERNAL = "Something went wrong while answering this request. The server's log has the details."
BENCH_FAILED = ("The quick bench could not run here (it needs each model's test set on the server). "
                "Run `cnndeploy bench RUN_DIR...` where the dataset is and serve again.")
CSS = """
.cnd-predictions { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
.cnd-predictions th, .cnd-predictions td { padding: 4px 8px; border-bottom: 1px solid #ddd; text-align: left; }
.cnd-predictions tr.cnd-reference td { background: #eef4ff; }
.cnd-predictions tr.cnd-disagree td { background: #ffe2c4; font-weight: 600; }
.cnd-prob { color: #666; font-size: 0.9em; }
.cnd-note { margin-top: 6px; }
.cnd-warn { color: #a34700; font-weight: 600; }
"""


def _gradio():
    try:
        import gradio as gr
    except ImportError:
        raise ServeError("the demo needs Gradio: pip install 'cnndeploy[demo]'") from None
    return gr


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Visitor mistakes become their friendly message; anything else is logged and reported vaguely."""
    from cnndeploy.serve.components import friendly

    gr = _gradio()

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UserInputError as e:
            raise friendly(str(e)) from None
        except ImageInputError:  # the runtime's own refusal; its text may describe the file in detail
            raise friendly(NOT_AN_IMAGE) from None
        except Exception:
            log.exception("%s failed", getattr(getattr(fn, "func", fn), "__name__", "a handler"))
            raise friendly(INTERNAL) from None
    return wrapper


class Demo:
    """The state behind the page: loaded variants, staged downloads, bench rows."""

    def __init__(self, run_dirs: list[str | os.PathLike], *, max_file_size: int, concurrency: int,
                 threads: int | None = None, top_k: int = 3) -> None:
        self.runs = [Path(r) for r in run_dirs]
        if not self.runs:
            raise ServeError("give at least one run directory")
        self.max_file_size, self.top_k = max_file_size, top_k
        if Image.MAX_IMAGE_PIXELS is None:  # something in this process switched Pillow's bomb guard off
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        self.groups: list[Group] = load_groups(self.runs, threads=threads or default_threads(concurrency))
        self._tmp = tempfile.TemporaryDirectory(prefix="cnndeploy-serve-")  # removed at exit
        self.files = Path(self._tmp.name)
        self.downloads = tables.stage_downloads(self.runs, self.files / "onnx")
        self.bench_files = tables.find_bench(self.runs)
        self.bench_rows = [r for f in self.bench_files for r in tables.read_bench(f, {r.name for r in self.runs})]

    # ---- classify ----

    def classify_image(self, group: Group, image: Any, *, drawn: bool = False) -> tuple[Any, str]:
        if image is None:
            raise UserInputError(EMPTY_DRAWING if drawn else NO_IMAGE)
        view, answers = classify(group, image, self.top_k, drawn=drawn)
        return view, tables.predictions_html(answers)

    def classify_drawing(self, group: Group, editor: dict | None) -> tuple[Any, str]:
        composite = (editor or {}).get("composite")
        if composite is None:
            raise UserInputError(EMPTY_DRAWING)
        return self.classify_image(group, composite, drawn=True)

    def api_classify(self, image: Any) -> dict[str, dict]:
        """Every variant of every dataset served: {variant: {labels, probabilities, latency_ms, ...}}."""
        if image is None:
            raise UserInputError(NO_IMAGE)
        return {name: a for g in self.groups for name, a in classify(g, image, self.top_k)[1].items()}

    # ---- bench ----

    def bench_view(self) -> tuple[str, list[list[Any]], list[tuple[Any, str]]]:
        folders = [f.parent for f in self.bench_files] + [self.files / "bench"]
        plots = next((p for p in (tables.bench_plots(f) for f in folders) if p), [])
        images = [(_load_rgb(path), caption) for path, caption in plots]
        if self.bench_rows:
            source = ", ".join(f"{f.parent.name}/{f.name}" for f in self.bench_files) or "a quick bench"
            note = f"{len(self.bench_rows)} rows from {source}. Click a column header to sort."
        else:
            note = "No bench.json next to these run directories yet: run a quick bench (a few seconds per variant)."
        return note, tables.bench_table(self.bench_rows), images

    def run_quick_bench(self) -> tuple[str, list[list[Any]], list[tuple[Any, str]]]:
        try:
            rows = tables.quick_bench(self.runs, self.files / "bench")
        except Exception as e:  # a missing dataset names local paths: keep them in the log
            log.warning("quick bench failed: %s", e)
            raise UserInputError(BENCH_FAILED) from None
        self.bench_files, self.bench_rows = [], rows
        return self.bench_view()


def _load_rgb(path: Path) -> Image.Image:
    """A plot handed to Gradio as pixels, so it never serves (or shows) the run directory's path."""
    with Image.open(path) as im:
        return im.convert("RGB")


# ---- layout ----------------------------------------------------------------------------------

def _examples_for(group: Group) -> list[str]:
    folder = EXAMPLES / group.dataset
    return sorted(str(p) for p in folder.glob("*") if p.suffix in (".png", ".jpg")) if folder.is_dir() else []


def _classify_panel(gr, demo: Demo, group: Group, index: int, uploads: Callable[[], set[str] | None]) -> None:
    from cnndeploy.serve.components import digit_pad, upload_image

    h, w = group.meta["height"], group.meta["width"]
    runs = sorted({m.run for m in group.members})
    gr.Markdown(f"**{len(group.members)} variants** of {', '.join(f'`{r}`' for r in runs)} answer the same "
                f"image. Rows that disagree with their FP32 model are highlighted.")
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Tabs():
                if group.digits:
                    with gr.Tab("Draw"):
                        gr.Markdown("Pick the brush (✎) and draw one digit, any size: it is cropped and "
                                    "centred like MNIST's digits.")
                        pad = digit_pad(label="Draw a digit", canvas_size=(280, 280), elem_id=f"pad-{index}",
                                       brush=gr.Brush(default_size=12, colors=["#000000"], color_mode="fixed"))
                        draw = gr.Button("Classify drawing", variant="primary", elem_id=f"classify-drawing-{index}")
                with gr.Tab("Upload"):
                    upload = upload_image(label="Upload a picture", sources=["upload", "clipboard"], height=300,
                                         max_file_size=demo.max_file_size, elem_id=f"upload-{index}",
                                         uploads=uploads)
                    button = gr.Button("Classify", variant="primary", elem_id=f"classify-{index}")
        with gr.Column(scale=2):
            view = gr.Image(label=f"What the models saw ({w}×{h}, enlarged)", type="pil", format="png",
                            height=300, interactive=False, buttons=["download"], elem_id=f"view-{index}")
    table = gr.HTML(elem_id=f"predictions-{index}")
    on_upload = guarded(functools.partial(demo.classify_image, group))
    button.click(on_upload, upload, [view, table], api_visibility="private")
    if group.digits:
        draw.click(guarded(functools.partial(demo.classify_drawing, group)), pad, [view, table],
                   api_visibility="private")
    examples = _examples_for(group)
    if examples:
        gr.Examples(examples, inputs=upload, outputs=[view, table], fn=on_upload, run_on_click=True,
                    cache_examples=False, examples_per_page=len(examples), label=f"{group.title} test images")


def _api_endpoint(gr, demo: Demo, uploads: Callable[[], set[str] | None]) -> None:
    """The `classify` endpoint: hidden components, since an endpoint is an event of components."""
    from cnndeploy.serve.components import upload_image

    with gr.Row(visible=False):
        image = upload_image(label="image", max_file_size=demo.max_file_size, uploads=uploads)
        result = gr.JSON(label="answers")
        trigger = gr.Button("classify")
    trigger.click(guarded(demo.api_classify), image, result, api_name="classify",
                  api_description="Every variant's top-3 labels, probabilities and latency (ms) for one image.")


def _bench_tab(gr, demo: Demo) -> None:
    note, rows, plots = demo.bench_view()
    text = gr.Markdown(note)
    frame = gr.DataFrame(value=rows, headers=tables.BENCH_HEADERS, datatype=tables.BENCH_TYPES,
                         interactive=False, wrap=True, label="bench rows", elem_id="bench-table")
    gallery = gr.Gallery(value=plots, columns=3, height="auto", object_fit="contain", label="plots",
                         visible=bool(plots), elem_id="bench-plots")
    run = gr.Button("Run a quick bench", visible=not rows, elem_id="quick-bench")

    def quick_bench() -> tuple[str, list[list[Any]], Any]:
        note, rows, plots = demo.run_quick_bench()
        return note, rows, gr.Gallery(value=plots, visible=bool(plots))
    # One bench at a time: it takes every core for seconds, and a second one would measure the first.
    run.click(guarded(quick_bench), None, [text, frame, gallery], api_visibility="private",
              concurrency_limit=1, concurrency_id="bench")


def _models_tab(gr, demo: Demo) -> None:
    gr.Markdown("Accuracy is the recorded test accuracy of that exact file (`metrics.json`, `quant.json`); "
                "parameters and MACs are the network's (an INT8 file stores the same ones in 8 bits).")
    gr.DataFrame(value=tables.model_rows(demo.runs), headers=tables.MODEL_HEADERS, interactive=False,
                 datatype=["str", "str", "number", "number", "number", "number", "number", "str"],
                 label="variants", elem_id="models-table")
    gr.File(value=[str(p) for p in demo.downloads], file_count="multiple", interactive=False,
            label="ONNX files (download)", elem_id="onnx-files")


def build_blocks(demo: Demo, *, max_queue: int = 64, concurrency: int = 4):
    """The page for a loaded Demo, queued: at most `max_queue` waiting, `concurrency` at once."""
    gr = _gradio()
    built: list[Any] = []

    def uploads() -> set[str] | None:  # what visitors uploaded to this Blocks: deleted once read
        return built[0].upload_file_set if built else None
    # Uploads are deleted once read (components.UploadReader); delete_cache ages out what is never read
    # (an upload no request classified) and the pictures sent back. Gradio keeps the examples and the
    # ONNX downloads (default values) out of it.
    with gr.Blocks(title="cnndeploy demo", analytics_enabled=False, delete_cache=DELETE_CACHE) as blocks:
        gr.Markdown("# cnndeploy: every variant, one image\nFP32, pruned and INT8 variants side by side, "
                    "with the latency of each request.")
        with gr.Tab("Classify"):
            for i, group in enumerate(demo.groups):
                with gr.Tab(group.title) if len(demo.groups) > 1 else gr.Group():
                    _classify_panel(gr, demo, group, i, uploads)
        with gr.Tab("Benchmark"):
            _bench_tab(gr, demo)
        with gr.Tab("Models"):
            _models_tab(gr, demo)
        _api_endpoint(gr, demo, uploads)
    built.append(blocks)
    return blocks.queue(max_size=max_queue, default_concurrency_limit=concurrency)


def build_app(run_dirs: list[str | os.PathLike], *, max_file_size: int = 5_000_000, max_queue: int = 64,
              concurrency: int = 4, threads: int | None = None):
    """The demo as a queued gr.Blocks; start it with `launch(...)`."""
    _gradio()  # fail with the install hint before loading any model
    demo = Demo(run_dirs, max_file_size=max_file_size, concurrency=concurrency, threads=threads)
    return build_blocks(demo, max_queue=max_queue, concurrency=concurrency)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def launch(blocks, *, host: str = "127.0.0.1", port: int | None = 7860, max_file_size: int = 5_000_000,
           share: bool = False, prevent_thread_lock: bool = False, quiet: bool = False) -> str:
    """Start the server with the demo's limits; returns the local URL."""
    if not is_loopback(host):
        log.warning("serving on %s: the demo is reachable from other machines", host)
    if share:
        log.warning("--share: Gradio publishes the demo through a public share link")
    _quiet_http_clients()
    try:
        # Gradio's own start-up lines are replaced by ours below: its hint to "set `share=True` in
        # `launch()`" speaks to Python callers, not to users of `cnndeploy serve --share`.
        _, url, _ = blocks.launch(
            server_name=host, server_port=port, share=share, max_file_size=max_file_size,
            show_error=False,          # only gr.Error texts (ours, fixed) reach the browser
            prevent_thread_lock=True, quiet=True, ssr_mode=False, mcp_server=False,
            enable_monitoring=False, run_history=False, footer_links=["api"], css=CSS)
    except OSError as e:  # the port is taken, or the address is not one of this machine's
        raise ServeError(f"cannot listen on {host}:{port} ({e}); pick another --port or --host") from None
    if not quiet:
        log.info("demo on %s%s", url, "" if share else " (--share adds a public link)")
    if not prevent_thread_lock:
        blocks.block_thread()  # serve until interrupted, as launch() itself would have
    return url


def _quiet_http_clients() -> None:
    """Gradio checks its own server with httpx at start-up, which logs every request at INFO
    ("HTTP Request: GET ..."): noise in the server's log. A level someone set on purpose stays."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def serve(run_dirs: list[str | os.PathLike], *, host: str = "127.0.0.1", port: int = 7860,
          max_file_size: int = 5_000_000, share: bool = False, max_queue: int = 64, concurrency: int = 4) -> None:
    """Build the demo and serve it until interrupted."""
    blocks = build_app(run_dirs, max_file_size=max_file_size, max_queue=max_queue, concurrency=concurrency)
    launch(blocks, host=host, port=port, max_file_size=max_file_size, share=share)
