"""The demo's tables: predictions (HTML), models (size, accuracy, params/MACs) and bench rows.

Gradio-free. The run directories are the only source: metrics.json, quant.json, prune.json and
bench.json, written by train, quant, prune and bench.
"""

from __future__ import annotations

import html
import logging
import shutil
from pathlib import Path
from typing import Any

from cnndeploy.artifacts import records
from cnndeploy.artifacts.files import BENCH, BENCH_DIR, WEIGHTS
from cnndeploy.artifacts.variants import Variant, discover
from cnndeploy.errors import CnnDeployError

log = logging.getLogger(__name__)

PREDICTION_HEADERS = ("variant", "backend", "top-1", "top-2", "top-3", "latency ms", "vs FP32")
MODEL_HEADERS = ["variant", "file", "size KB", "test accuracy %", "test images", "parameters", "MACs",
                 "pruned from"]
BENCH_HEADERS = ["variant", "backend", "batch", "accuracy %", "p50 ms", "p99 ms", "images/s", "size KB",
                 "slower than parent", "status"]
BENCH_TYPES = ["str", "str", "number", "number", "number", "number", "number", "number", "str", "str"]
PLOTS = (("accuracy_vs_latency.png", "Accuracy vs latency (Pareto front marked)"),
         ("size.png", "File size"), ("throughput_vs_batch.png", "Throughput vs batch size"))


# ---- predictions ---------------------------------------------------------------------------

def _guess(label: str, prob: float, strong: bool) -> str:
    text = f"{html.escape(label)} <span class='cnd-prob'>{prob:.1%}</span>"
    return f"<b>{text}</b>" if strong else text


def _verdict(agrees: bool | None) -> tuple[str, str]:
    """(row class, cell text): the reference itself, agreeing, or highlighted disagreement."""
    if agrees is None:
        return "cnd-reference", "reference"
    return ("cnd-agree", "agrees") if agrees else ("cnd-disagree", "⚠ disagrees")


def _prediction_row(name: str, a: dict[str, Any]) -> str:
    css, verdict = _verdict(a.get("agrees_with_fp32"))
    guesses = [_guess(lbl, p, i == 0) for i, (lbl, p) in enumerate(zip(a["labels"], a["probabilities"]))]
    guesses += [""] * (3 - len(guesses))
    variant = f"{a['run']}:{a['precision']}"
    cells = [html.escape(variant), html.escape(a["backend"]), *guesses[:3], f"{a['latency_ms']:.2f}", verdict]
    tds = "".join(f"<td>{c}</td>" for c in cells)
    return f"<tr class='cnd-row {css}' data-variant='{html.escape(name, quote=True)}'>{tds}</tr>"


def predictions_html(answers: dict[str, dict]) -> str:
    """One table row per member; rows whose top-1 differs from their FP32 model are highlighted."""
    head = "".join(f"<th>{h}</th>" for h in PREDICTION_HEADERS)
    rows = "".join(_prediction_row(name, a) for name, a in answers.items())
    disagree = sum(a.get("agrees_with_fp32") is False for a in answers.values())
    note = (f"<p class='cnd-note cnd-warn'>{disagree} variant(s) disagree with their FP32 model.</p>" if disagree
            else "<p class='cnd-note'>Every variant agrees with its FP32 model.</p>")
    return f"<table class='cnd-predictions'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{note}"


# ---- models --------------------------------------------------------------------------------

def _accuracy(variant: Variant) -> tuple[float | None, int | None]:
    """(test accuracy, test images) of this exact file, as recorded when it was made."""
    if variant.precision == "fp32" and variant.kind in ("weights", "onnx"):
        # export --onnx fails unless the ONNX file matches PyTorch, so the run's accuracy is the file's.
        m = records.read_metrics(variant.run)
        return m.get("test_accuracy"), m.get("test_images")
    q = records.read_quant(variant.run).get(variant.path.name, {})
    return q.get("int8_accuracy"), q.get("test_images")


def _complexity(run: Path) -> dict[str, int]:
    """Parameters and MACs of a run's network (torch-pruning's count), or prune.json's record.

    Only runs that hold weights are counted (with torch): ONNX-only runs keep the demo torch-free.
    """
    try:
        if not (run / WEIGHTS).is_file():
            raise FileNotFoundError(f"no {WEIGHTS}")
        from cnndeploy.models.cost import run_cost

        cost = run_cost(run)
        if cost["params"] is not None:
            return cost
    except Exception as e:  # unreadable weights or no torch-pruning: fall back to prune.json, else a dash
        log.info("no parameter count for %s: %s", run.name, str(e).splitlines()[0][:200])
    record = records.PruneRecord.read(run)
    return record.after_finetune if record else {}


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 2)


def model_rows(run_dirs: list[Path]) -> list[list[Any]]:
    rows = []
    for run in run_dirs:
        sizes = _complexity(run)
        parent = records.source_run(run)
        for v in discover(run):
            acc, n = _accuracy(v)
            rows.append([v.name, v.path.name, round(v.size_bytes / 1e3, 1), _pct(acc), n, sizes.get("params"),
                         sizes.get("macs"), parent.name if parent else ""])
    return rows


def stage_downloads(run_dirs: list[Path], folder: Path) -> list[Path]:
    """Copies of the ONNX files named `<run>.<file>`, so downloads do not all say model.onnx.

    The app serves only this folder: the run directories themselves are never exposed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for run in run_dirs:
        for v in discover(run):
            if v.kind == "onnx":
                dest = folder / f"{run.name}.{v.path.name}"
                shutil.copyfile(v.path, dest)
                out.append(dest)
    return out


# ---- bench ---------------------------------------------------------------------------------

def find_bench(run_dirs: list[Path]) -> list[Path]:
    """bench.json files beside the runs: in a run, in its bench/, or in the pipeline's ../bench/."""
    seen: dict[Path, None] = {}
    for run in run_dirs:
        for folder in (run, run / BENCH_DIR, run.parent / BENCH_DIR):
            cand = folder / BENCH
            if cand.is_file():
                seen.setdefault(cand.resolve(), None)
    return list(seen)


def read_bench(path: Path, runs: set[str]) -> list[records.BenchRow]:
    """The rows of one bench.json that concern the served runs; a malformed file is skipped."""
    try:
        rows = records.read_bench(path.parent)["rows"] if path.name == BENCH else []
    except CnnDeployError:
        rows = []
    if not rows:
        log.warning("%s holds no cnndeploy bench rows; the Benchmark tab skips it", path)
    return [r for r in rows if r.run in runs]


def _num(value: Any, scale: float = 1.0, digits: int = 3) -> float | None:
    return round(float(value) * scale, digits) if isinstance(value, (int, float)) else None


def bench_table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    flag = {True: "yes", False: "no", None: ""}
    return [[r.get("variant"), r.get("backend"), r.get("batch_size"), _num(r.get("accuracy"), 100, 2),
             _num(r.get("latency_ms_p50")), _num(r.get("latency_ms_p99")), _num(r.get("throughput_ips"), 1, 1),
             _num(r.get("size_bytes"), 1e-3, 1), flag.get(r.get("slower_than_parent"), ""), r.get("status", "")]
            for r in rows]


def bench_plots(folder: Path) -> list[tuple[Path, str]]:
    return [(folder / name, caption) for name, caption in PLOTS if (folder / name).is_file()]


def quick_bench(run_dirs: list[Path], out: Path) -> list[dict[str, Any]]:
    """A short `cnndeploy bench` (batch 1 and 32, 0.2 s a row) for runs that have no bench.json yet."""
    from cnndeploy.bench.harness import BenchConfig, run_bench

    backends = ["ort"] + (["torch"] if any(v.kind == "weights" for r in run_dirs for v in discover(r)) else [])
    data_dir = _recorded_data_dir(run_dirs)
    cfg = BenchConfig(backends=backends, batch_sizes=[1, 32], min_seconds=0.2)
    return run_bench(run_dirs, cfg, out=out, data_dir=data_dir, progress=False)


def _recorded_data_dir(run_dirs: list[Path]) -> str | None:
    """The --data-dir the first run was trained with, if it still exists here."""
    for run in run_dirs:
        recorded = records.read_metrics(run).get("config", {}).get("data_dir")
        if isinstance(recorded, str) and recorded and Path(recorded).is_dir():
            return recorded
    return None
