"""`cnndeploy bench`: every variant x backend x batch size, accuracy and latency side by side."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cnndeploy.bench.env import environment
from cnndeploy.bench.memory import track
from cnndeploy.bench.peak import peak_for, utilisation
from cnndeploy.bench.report import bench_markdown
from cnndeploy.bench.runners import KIND, Runner, check_backends, make_runner, on_gpu, skip_reason
from cnndeploy.bench.timing import measure
from cnndeploy.bench.variants import Variant, discover
from cnndeploy.data import dataset_for
from cnndeploy.data.types import normalise
from cnndeploy.fileio import write_bytes_atomic, write_json_atomic
from cnndeploy.rundir import read_json_if_exists, read_model_json

HINT = {"weights": "train it", "onnx": "cnndeploy export RUN_DIR --onnx",
        "engine": "cnndeploy export RUN_DIR --trt"}
COLUMNS = ("variant", "backend", "precision", "batch_size", "accuracy", "latency_ms_mean", "latency_ms_std",
           "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_ips", "size_bytes", "params",
           "macs", "achieved_gops", "peak_share", "peak_mem_mb", "load_seconds", "slower_than_parent", "status")


def _normalised(meta: dict, pixels: np.ndarray) -> np.ndarray:
    return normalise(pixels, meta["mean"], meta["std"])


def _accuracy(run: Runner, meta: dict, ds, batch: int = 256) -> float:
    correct = 0
    for start in range(0, len(ds.test_y), batch):
        logits = run(_normalised(meta, ds.test_x[start:start + batch]))
        correct += int((logits.argmax(1) == ds.test_y[start:start + batch]).sum())
    return correct / len(ds.test_y)


def _rows_for(variant: Variant, backend: str, ds, meta: dict, batch_sizes: list[int], *,
              threads: int | None, min_seconds: float, cost: dict, peaks: dict) -> list[dict[str, Any]]:
    base = {"variant": variant.name, "backend": backend, "precision": variant.precision,
            "size_bytes": variant.size_bytes, **cost}
    reason = skip_reason(backend, variant)
    if reason:
        return [{**base, "batch_size": b, "status": f"skipped: {reason}"} for b in batch_sizes]
    gpu = on_gpu(backend)
    with track(gpu) as memory:
        t0 = time.perf_counter()
        try:
            run = make_runner(backend, variant, threads=threads)
            run(_normalised(meta, ds.test_x[:1]))  # first call: lazy init and graph optimisation
        except Exception as e:  # a backend failing on one file must not stop the whole matrix
            return [{**base, "batch_size": b, "status": f"failed: {str(e).splitlines()[0][:200]}"}
                    for b in batch_sizes]
        load = time.perf_counter() - t0
        accuracy = _accuracy(run, meta, ds)
        timed = []
        for b in batch_sizes:
            x = _normalised(meta, np.resize(ds.test_x[:b], (b, *ds.test_x.shape[1:])))
            timed.append((b, measure(lambda: run(x), warmup=3, min_calls=5, min_seconds=min_seconds)))
    peak = peak_for(peaks["gpu" if gpu else "cpu"] or {}, variant.precision)
    rows = []
    for b, stats in timed:
        gops, share = utilisation(cost.get("macs"), stats.throughput(b), peak)
        rows.append({**base, "batch_size": b, "accuracy": accuracy, "latency_ms_mean": stats.mean_ms,
                     "latency_ms_std": stats.std_ms, "latency_ms_p50": stats.p50_ms,
                     "latency_ms_p90": stats.p90_ms, "latency_ms_p99": stats.p99_ms,
                     "throughput_ips": stats.throughput(b), "achieved_gops": gops, "peak_share": share,
                     "peak_mem_mb": None if memory.mb is None else round(memory.mb, 1),
                     "peak_mem_kind": memory.kind, "load_seconds": round(load, 3), "status": "ok"})
    return rows




def _flag_slow_compression(rows: list[dict], parents: dict[str, str]) -> None:
    """Mark compressed variants slower than their FP32 parent on the same backend and batch size."""
    speed = {(r["variant"], r["backend"], r["batch_size"]): r.get("throughput_ips") for r in rows}
    fp32_of = {r["variant"].split(":")[0]: r["variant"] for r in rows if r["precision"] == "fp32"}
    for r in rows:
        run = r["variant"].split(":")[0]
        parent = fp32_of.get(parents.get(run, run)) if r["precision"] == "fp32" else fp32_of.get(run)
        if parent == r["variant"] or parent is None or r.get("throughput_ips") is None:
            r["slower_than_parent"] = None
            continue
        ref = speed.get((parent, r["backend"], r["batch_size"]))
        if ref is None and r["backend"] in ("ort", "ort-cuda", "ort-trt", "tensorrt"):
            ref = speed.get((parent, "torch", r["batch_size"]))  # weights' best counterpart
        r["slower_than_parent"] = None if ref is None else r["throughput_ips"] < ref


def run_bench(run_dirs: list[str | os.PathLike], *, backends: list[str], batch_sizes: list[int],
              threads: int | None = None, out: str | os.PathLike = "bench", data_dir: str | None = None,
              min_seconds: float = 1.0, progress: bool = True) -> list[dict[str, Any]]:
    from cnndeploy.train.prune import run_cost

    check_backends(backends)
    jobs, missing, parents, data = [], [], {}, {}
    for rd in run_dirs:
        meta = read_model_json(rd)
        data[Path(rd).name] = (meta, dataset_for(meta, data_dir=data_dir), run_cost(rd))
        source = read_json_if_exists(Path(rd) / "prune.json").get("source_run")
        if source:
            parents[Path(rd).name] = Path(source).name
        variants = discover(rd)
        jobs += [(v, b) for v in variants for b in backends if KIND[b] == v.kind]
        missing += [(Path(rd).name, b) for b in backends if not any(KIND[b] == v.kind for v in variants)]
    rows: list[dict[str, Any]] = [
        {"variant": f"{run}:-", "backend": b, "precision": None, "batch_size": None, "size_bytes": None,
         "status": f"skipped: no {KIND[b]} file in {run} ({HINT[KIND[b]]})"} for run, b in missing]
    env = environment(threads)
    import torch

    saved_threads = torch.get_num_threads()  # the torch runner sets --threads process-wide: put it back
    try:
        for variant, backend in tqdm(jobs, desc="bench", unit="variant", disable=None if progress else True):
            meta, ds, cost = data[variant.run.name]
            rows += _rows_for(variant, backend, ds, meta, batch_sizes, threads=threads,
                              min_seconds=min_seconds, cost=cost, peaks=env["peak"])
    finally:
        torch.set_num_threads(saved_threads)
    _flag_slow_compression(rows, parents)
    _write(Path(out), rows, env)
    return rows


def _write(out: Path, rows: list[dict], env: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "bench.json", {"environment": env, "rows": rows})
    lines = [",".join(COLUMNS)]
    for r in rows:
        lines.append(",".join(_csv_cell(r.get(c)) for c in COLUMNS))
    write_bytes_atomic(out / "bench.csv", ("\n".join(lines) + "\n").encode())
    write_bytes_atomic(out / "bench.md", bench_markdown(rows, env).encode())
    from cnndeploy.bench.plots import plot_all

    plot_all(rows, out)


def _csv_cell(value: Any) -> str:
    text = "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
    return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text
