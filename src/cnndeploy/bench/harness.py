"""`cnndeploy bench`: every variant x backend x batch size, accuracy and latency side by side."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.files import made_by
from cnndeploy.artifacts.records import BENCH_COLUMNS, BenchRow, source_run, write_bench
from cnndeploy.artifacts.variants import Variant, discover
from cnndeploy.bench.env import environment
from cnndeploy.bench.memory import track
from cnndeploy.bench.peak import peak_for, utilisation
from cnndeploy.bench.report import bench_markdown
from cnndeploy.bench.timing import measure
from cnndeploy.data import dataset_for
from cnndeploy.data.types import normalise
from cnndeploy.fileio import write_bytes_atomic
from cnndeploy.runtime.accuracy import measure_accuracy
from cnndeploy.runtime.runners import KIND, check_backends, make_runner, on_gpu, skip_reason



@dataclass(frozen=True)
class BenchConfig:
    """What `cnndeploy bench` measures; recorded in bench.json beside the rows."""
    backends: list[str] = field(default_factory=lambda: ["torch", "ort"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32, 256])
    threads: int | None = None      # intra-op threads of every backend (None: the backend's default)
    min_seconds: float = 1.0        # timing budget per row


def _rows_for(variant: Variant, backend: str, ds, card: ModelCard, cfg: BenchConfig, *,
              cost: dict, peaks: dict) -> list[BenchRow]:
    batch_sizes, threads = cfg.batch_sizes, cfg.threads
    base = {"variant": variant.name, "run": variant.run.name, "file": variant.spec.name, "backend": backend,
            "precision": variant.precision, "size_bytes": variant.size_bytes, **cost}
    reason = skip_reason(backend, variant)
    if reason:
        return [BenchRow(**base, batch_size=b, status=f"skipped: {reason}") for b in batch_sizes]
    gpu = on_gpu(backend)
    with track(gpu) as memory:
        t0 = time.perf_counter()
        try:
            run = make_runner(backend, variant, threads=threads)
            run(normalise(ds.test_x[:1], card.mean, card.std))  # first call: lazy init, graph optimisation
        except Exception as e:  # a backend failing on one file must not stop the whole matrix
            return [BenchRow(**base, batch_size=b, status=f"failed: {str(e).splitlines()[0][:200]}")
                    for b in batch_sizes]
        load = time.perf_counter() - t0
        accuracy = measure_accuracy(run, card, ds)["test_accuracy"]
        timed = []
        for b in batch_sizes:
            x = normalise(np.resize(ds.test_x[:b], (b, *ds.test_x.shape[1:])), card.mean, card.std)
            timed.append((b, measure(lambda: run(x), warmup=3, min_calls=5, min_seconds=cfg.min_seconds)))
    peak = peak_for(peaks["gpu" if gpu else "cpu"] or {}, variant.precision)
    rows = []
    for b, stats in timed:
        gops, share = utilisation(cost.get("macs"), stats.throughput(b), peak)
        rows.append(BenchRow(**base, batch_size=b, accuracy=accuracy, latency_ms_mean=stats.mean_ms,
                             latency_ms_std=stats.std_ms, latency_ms_p50=stats.p50_ms, latency_ms_p90=stats.p90_ms,
                             latency_ms_p99=stats.p99_ms, throughput_ips=stats.throughput(b), achieved_gops=gops,
                             peak_share=share, peak_mem_mb=None if memory.mb is None else round(memory.mb, 1),
                             peak_mem_kind=memory.kind, load_seconds=round(load, 3), status="ok"))
    return rows


def _flag_slow_compression(rows: list[BenchRow], parents: dict[str, str]) -> None:
    """Mark compressed variants slower than their FP32 parent on the same backend and batch size."""
    speed = {(r.variant, r.backend, r.batch_size): r.throughput_ips for r in rows}
    fp32_of = {r.run: r.variant for r in rows if r.precision == "fp32"}
    for r in rows:
        parent = fp32_of.get(parents.get(r.run, r.run)) if r.precision == "fp32" else fp32_of.get(r.run)
        if parent == r.variant or parent is None or r.throughput_ips is None:
            r.slower_than_parent = None
            continue
        ref = speed.get((parent, r.backend, r.batch_size))
        if ref is None and KIND.get(r.backend) != "weights":
            ref = speed.get((parent, "torch", r.batch_size))  # weights' best counterpart
        r.slower_than_parent = None if ref is None else r.throughput_ips < ref


def run_bench(run_dirs: list[str | os.PathLike], cfg: BenchConfig = BenchConfig(), *,
              out: str | os.PathLike, data_dir: str | None = None, progress: bool = True) -> list[BenchRow]:
    """Every variant of RUN_DIRs on every backend of `cfg`: rows written to OUT/bench.{json,csv,md}."""
    from cnndeploy.models.cost import run_cost

    check_backends(cfg.backends)
    jobs, missing, parents, data = [], [], {}, {}
    for rd in run_dirs:
        card = ModelCard.read(rd)
        data[Path(rd).name] = (card, dataset_for(card, data_dir=data_dir), run_cost(rd))
        parent = source_run(Path(rd))
        if parent:
            parents[Path(rd).name] = parent.name
        variants = discover(rd)
        jobs += [(v, b) for v in variants for b in cfg.backends if KIND[b] == v.kind]
        missing += [(Path(rd).name, b) for b in cfg.backends if not any(KIND[b] == v.kind for v in variants)]
    rows = [BenchRow(variant=f"{run}:-", run=run, file=None, backend=b, precision=None, batch_size=None,
                     size_bytes=None, status=f"skipped: no {KIND[b]} file in {run} ({made_by(KIND[b])})")
            for run, b in missing]
    env = environment(cfg.threads)
    import torch

    saved_threads = torch.get_num_threads()  # the torch runner sets --threads process-wide: put it back
    try:
        for variant, backend in tqdm(jobs, desc="bench", unit="variant", disable=None if progress else True):
            card, ds, cost = data[variant.run.name]
            rows += _rows_for(variant, backend, ds, card, cfg, cost=cost, peaks=env["peak"])
    finally:
        torch.set_num_threads(saved_threads)
    _flag_slow_compression(rows, parents)
    _write(Path(out), rows, env, cfg, [Path(rd).name for rd in run_dirs])
    return rows


def _write(out: Path, rows: list[BenchRow], env: dict, cfg: BenchConfig, runs: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_bench(out, rows, env, dataclasses.asdict(cfg), runs)
    lines = [",".join(BENCH_COLUMNS)]
    for r in rows:
        lines.append(",".join(_csv_cell(r.get(c)) for c in BENCH_COLUMNS))
    write_bytes_atomic(out / "bench.csv", ("\n".join(lines) + "\n").encode())
    write_bytes_atomic(out / "bench.md", bench_markdown(rows, env).encode())
    from cnndeploy.bench.plots import plot_all

    plot_all(rows, out)


def _csv_cell(value: Any) -> str:
    text = "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
    return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text
