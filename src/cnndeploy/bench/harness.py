"""`cnndeploy bench`: every variant x backend x batch size, accuracy and latency side by side."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from cnndeploy.artifacts import lock
from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.files import made_by
from cnndeploy.artifacts.records import BENCH_COLUMNS, BenchRow, source_run, write_bench
from cnndeploy.artifacts.variants import Variant, discover, family_root
from cnndeploy.bench.env import environment, record_end_clocks
from cnndeploy.bench.memory import PeakMemory, track
from cnndeploy.bench.peak import peak_for, utilisation
from cnndeploy.bench.report import bench_markdown
from cnndeploy.bench.timing import rotation_count, sample_ns, spread, stats_from_ns
from cnndeploy.data import dataset_for
from cnndeploy.data.types import normalise
from cnndeploy.errors import CnnDeployError
from cnndeploy.fileio import ensure_dir, write_bytes_atomic
from cnndeploy.runtime.accuracy import measure_accuracy
from cnndeploy.runtime.runners import KIND, backend_variants, check_backends, make_runner, on_gpu, skip_reason

log = logging.getLogger("cnndeploy")


@dataclass(frozen=True)
class BenchConfig:
    """What `cnndeploy bench` measures; recorded in bench.json beside the rows."""
    backends: list[str] = field(default_factory=lambda: ["torch", "ort"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32, 256])
    threads: int | None = None      # intra-op threads of every backend (None: the backend's default)
    min_seconds: float = 1.0        # timing budget per row, shared out over the rounds
    rounds: int = 3                 # interleaved timing rounds: their spread is the noise the flag allows for
    noise_floor: float = 0.02       # a gap below this is never flagged, however small the measured spread

    def check(self) -> "BenchConfig":
        check_backends(self.backends)
        if not (isinstance(self.min_seconds, (int, float)) and 0 < self.min_seconds < float("inf")):
            raise CnnDeployError(f"--min-seconds {self.min_seconds}: expected a positive number of seconds")
        if self.rounds < 1 or self.noise_floor < 0:
            raise CnnDeployError(f"bench: rounds {self.rounds} must be >= 1 and noise floor {self.noise_floor} >= 0")
        if not self.batch_sizes or any(type(b) is not int or b < 1 for b in self.batch_sizes):
            raise CnnDeployError(f"--batch-sizes {self.batch_sizes}: expected positive integers")
        if self.threads is not None and (type(self.threads) is not int or self.threads < 1):
            raise CnnDeployError(f"--threads {self.threads}: expected a positive integer")
        return self


WARMUP = 3       # calls per batch size before any timing (lazy init, graph re-planning, allocations)
GPU_BATCH_SIZES = [1, 64, 1024]   # the default when every backend computes on the GPU
CPU_BATCH_SIZES = [1, 32, 256]


def default_batch_sizes(backends: list[str]) -> list[int]:
    """Batch sizes to time when none are given: 1, 64, 1024 where every backend is a GPU one here."""
    return list(GPU_BATCH_SIZES if backends and all(on_gpu(b) for b in backends) else CPU_BATCH_SIZES)
MIN_CALLS = 5    # timed calls per row at least, over all rounds


@dataclass
class _Loaded:
    """One variant on one backend, loaded and warmed up, collecting timing rounds."""
    variant: Variant
    backend: str
    base: dict[str, Any]
    run: Callable[[np.ndarray], Any]
    accuracy: float
    load_seconds: float
    memory: PeakMemory
    inputs: dict[int, np.ndarray]
    rounds: dict[int, list[list[int]]] = field(default_factory=dict)
    buffers: dict[int, list[Any]] = field(default_factory=dict)  # rotated on the GPU (> L2 together)
    on_device: bool = False       # buffers are device-resident (run.to_device): timed calls are the model
    with_copies: dict[int, list[int]] = field(default_factory=dict)  # device rows: host-array calls, copies included


def _load(variant: Variant, backend: str, ds, card: ModelCard, cfg: BenchConfig, *,
          cost: dict, l2_bytes: int | None = None) -> _Loaded | list[BenchRow]:
    """The variant ready to time, or its rows when it is skipped or fails to load."""
    base = {"variant": variant.name, "run": variant.run.name, "file": variant.spec.name, "backend": backend,
            "precision": variant.precision, "size_bytes": variant.size_bytes, **cost}
    reason = skip_reason(backend, variant)
    if reason:
        return [BenchRow(**base, batch_size=b, status=f"skipped: {reason}") for b in cfg.batch_sizes]
    with track(on_gpu(backend)) as memory:
        t0 = time.perf_counter()
        try:
            run = make_runner(backend, variant, threads=cfg.threads)
            run(normalise(ds.test_x[:1], card.mean, card.std))  # first call: lazy init, graph optimisation
            load = time.perf_counter() - t0
            prepare = getattr(run, "prepare", None)  # OpenVINO: a static reshape per batch size, where faster
            if prepare:
                prepare(list(cfg.batch_sizes))
            accuracy = measure_accuracy(run, card, ds)["test_accuracy"]
            inputs = {b: normalise(np.resize(ds.test_x[:b], (b, *ds.test_x.shape[1:])), card.mean, card.std)
                      for b in cfg.batch_sizes}
            for x in inputs.values():
                for _ in range(WARMUP):
                    run(x)
        except Exception as e:  # a backend failing on one file must not stop the whole matrix
            return [BenchRow(**base, batch_size=b, status=f"failed: {str(e).splitlines()[0][:200]}")
                    for b in cfg.batch_sizes]
    # on the GPU, copies of each batch in distinct memory, so no call finds its input cached in L2
    l2 = l2_bytes if on_gpu(backend) else None
    buffers: dict[int, list[Any]] = {b: [x] + [x.copy() for _ in range(rotation_count(x.nbytes, l2) - 1)]
                                     for b, x in inputs.items()}
    on_device = False
    to_device = getattr(run, "to_device", None) if on_gpu(backend) else None
    if to_device:
        try:
            placed = {b: [to_device(x) for x in bufs] for b, bufs in buffers.items()}
            if all(h is not None for hs in placed.values() for h in hs):
                for hs in placed.values():
                    for _ in range(WARMUP):
                        run.run_on_device(hs[0])
                buffers, on_device = placed, True
        except Exception as e:  # no device path for this file: time host arrays, as on the CPU
            log.info("bench %s [%s]: timing host arrays (%s)", variant.name, backend, str(e).splitlines()[0][:120])
    return _Loaded(variant, backend, base, run, accuracy, round(load, 3), memory, inputs,
                   {b: [] for b in cfg.batch_sizes}, buffers, on_device)


def _cuda_sync(backend: str) -> Callable[[], None] | None:
    """torch.cuda.synchronize for a GPU row, so no clock is read before the device has finished."""
    if not on_gpu(backend):
        return None
    import torch

    return torch.cuda.synchronize if torch.cuda.is_available() else None


def _time_round(job: _Loaded, cfg: BenchConfig) -> None:
    """One round of every batch size of `job`: a share of the budget, after one call to re-warm caches."""
    calls = max(2, -(-MIN_CALLS // cfg.rounds))
    sync = _cuda_sync(job.backend)
    call = job.run.run_on_device if job.on_device else job.run
    for b, x in job.inputs.items():
        nxt = itertools.cycle(job.buffers.get(b) or [x]).__next__
        job.rounds[b].append(sample_ns(lambda: call(nxt()), warmup=1, min_calls=calls,
                                       min_seconds=cfg.min_seconds / cfg.rounds, sync=sync))
        if job.on_device and len(job.rounds[b]) == cfg.rounds:   # the second, labelled figure: host arrays
            job.with_copies[b] = sample_ns(lambda x=x: job.run(x), warmup=1, min_calls=calls,
                                           min_seconds=cfg.min_seconds / cfg.rounds, sync=sync)


def _rows_of(job: _Loaded, peaks: dict) -> list[BenchRow]:
    gpu = on_gpu(job.backend)
    peak = peak_for(peaks["gpu" if gpu else "cpu"] or {}, job.variant.precision)
    memory = job.memory
    details = getattr(job.run, "row_details", None)  # what a runtime says it ran (batch shape, kernels)
    rows = []
    for b, rounds in job.rounds.items():
        stats = stats_from_ns([t for r in rounds for t in r])
        per_round = [stats_from_ns(r).throughput(b) for r in rounds]
        noise = spread(per_round)
        gops, share = utilisation(job.base.get("macs"), stats.throughput(b), peak)
        rows.append(BenchRow(**job.base, **(details(b) if details else {}), batch_size=b, accuracy=job.accuracy, latency_ms_mean=stats.mean_ms,
                             latency_ms_std=stats.std_ms, latency_ms_p50=stats.p50_ms, latency_ms_p90=stats.p90_ms,
                             latency_ms_p99=stats.p99_ms, throughput_ips=stats.throughput(b), achieved_gops=gops,
                             peak_share=share, peak_mem_mb=None if memory.mb is None else round(memory.mb, 1),
                             peak_mem_kind=memory.kind, load_seconds=job.load_seconds, status="ok",
                             spread=None if noise is None else round(noise, 4),
                             round_throughputs=[round(t, 2) for t in per_round],
                             timed="device-resident I/O" if job.on_device else None,
                             latency_ms_p50_with_copies=(stats_from_ns(job.with_copies[b]).p50_ms
                                                         if b in job.with_copies else None)))
    return rows


def _bench_family(jobs: list[tuple[Variant, str]], data: dict, cfg: BenchConfig, env: dict,
                  bar, numbers: Iterator[str]) -> list[BenchRow]:
    """Load every job of one family, then time them in interleaved rounds, so drift of the machine
    hits a variant and its parent alike and the rounds' spread measures what is left."""
    rows: list[BenchRow] = []
    loaded: list[_Loaded] = []
    for variant, backend in jobs:
        number = next(numbers)
        if bar.disable:  # no bar drawn (--no-progress, no terminal): still say what is measured
            log.info("bench %s: %s [%s]", number, variant.name, backend)
        card, ds, cost = data[variant.run.name]
        job = _load(variant, backend, ds, card, cfg, cost=cost, l2_bytes=(env.get("gpu") or {}).get("l2_bytes"))
        if isinstance(job, list):
            rows += job
        else:
            loaded.append(job)
        bar.update(1)
    bar.update(len(jobs) - len(loaded))      # skipped and failed jobs have no rounds to wait for
    for _ in range(cfg.rounds):
        for job in loaded:
            _time_round(job, cfg)
            bar.update(1)
    for job in loaded:
        rows += _rows_of(job, env["peak"])
    return rows


def _flag_slow_compression(rows: list[BenchRow], parents: dict[str, str], noise_floor: float) -> None:
    """Compare compressed variants with their FP32 parent on the same backend and batch size.

    Flagged only when slower by more than the noise: the larger round-to-round spread of the
    two rows, and at least `noise_floor` (a few rounds can understate the spread by chance).
    """
    by_key = {(r.variant, r.backend, r.batch_size): r for r in rows if r.throughput_ips}
    fp32_of = {r.run: r.variant for r in rows if r.precision == "fp32"}
    for r in rows:
        parent = fp32_of.get(parents.get(r.run, r.run)) if r.precision == "fp32" else fp32_of.get(r.run)
        r.slower_than_parent = r.parent = r.parent_backend = r.speed_vs_parent = r.flag_tolerance = None
        if parent == r.variant or parent is None or not r.throughput_ips:
            continue
        ref = by_key.get((parent, r.backend, r.batch_size))
        if ref is None and KIND.get(r.backend) != "weights":
            ref = by_key.get((parent, "torch", r.batch_size))  # weights' best counterpart
        if ref is None:
            continue
        ratio = r.throughput_ips / ref.throughput_ips
        tolerance = max([noise_floor] + [s for s in (r.spread, ref.spread) if s is not None])
        r.parent, r.parent_backend = ref.variant, ref.backend
        r.speed_vs_parent, r.flag_tolerance = round(ratio, 4), round(tolerance, 4)
        r.slower_than_parent = ratio < 1 - tolerance
    _flag_int8_slower_than_fp16(rows, noise_floor)


def _flag_int8_slower_than_fp16(rows: list[BenchRow], noise_floor: float) -> None:
    """On a GPU, onnxruntime runs an INT8 file's Q/DQ nodes in floating point: say where that row
    is slower than the same run's FP16 file on the same backend and batch size (same noise rule)."""
    fp16 = {(r.run, r.backend, r.batch_size): r for r in rows if r.precision == "fp16" and r.throughput_ips}
    for r in rows:
        r.slower_than_fp16 = None
        ref = fp16.get((r.run, r.backend, r.batch_size))
        if not (r.precision or "").startswith("int8") or not on_gpu(r.backend) or not r.throughput_ips or ref is None:
            continue
        tolerance = max([noise_floor] + [s for s in (r.spread, ref.spread) if s is not None])
        r.slower_than_fp16 = r.throughput_ips / ref.throughput_ips < 1 - tolerance


def run_bench(run_dirs: list[str | os.PathLike], cfg: BenchConfig = BenchConfig(), *,
              out: str | os.PathLike, data_dir: str | None = None, progress: bool = True) -> list[BenchRow]:
    """Every variant of RUN_DIRs on every backend of `cfg`: rows written to OUT/bench.{json,csv,md}."""
    from cnndeploy.models.cost import run_cost

    cfg.check()
    families: dict[str, list] = {}
    missing, parents, data = [], {}, {}
    known = {Path(rd).name: Path(rd) for rd in run_dirs}
    for rd in run_dirs:
        card = ModelCard.read(rd)
        data[Path(rd).name] = (card, dataset_for(card, data_dir=data_dir), run_cost(rd))
        parent = source_run(Path(rd))
        if parent:
            parents[Path(rd).name] = parent.name
        variants = discover(rd)
        families.setdefault(family_root(Path(rd), known).name, []).extend(
            (w, b) for v in variants for b in cfg.backends if KIND[b] == v.kind for w in backend_variants(b, v))
        missing += [(Path(rd).name, b) for b in cfg.backends if not any(KIND[b] == v.kind for v in variants)]
    # before any measuring: an unwritable --out, or one another bench is writing, would lose it all
    with lock.writing(out, command="cnndeploy bench"):
        rows = [BenchRow(variant=f"{run}:-", run=run, file=None, backend=b, precision=None, batch_size=None,
                         size_bytes=None, status=f"skipped: no {KIND[b]} file in {run} ({made_by(KIND[b])})")
                for run, b in missing]
        env = environment(cfg.threads)
        import torch

        saved_threads = torch.get_num_threads()  # the torch runner sets --threads process-wide: put it back
        count = sum(len(jobs) for jobs in families.values())
        numbers = (f"{i}/{count}" for i in range(1, count + 1))
        try:
            with tqdm(total=count * (1 + cfg.rounds), desc="bench", unit="step",  # load, then each round
                      disable=None if progress else True) as bar:
                for jobs in families.values():
                    rows += _bench_family(jobs, data, cfg, env, bar, numbers)
        finally:
            torch.set_num_threads(saved_threads)
        record_end_clocks(env)
        _flag_slow_compression(rows, parents, cfg.noise_floor)
        _write(Path(out), rows, env, cfg, [Path(rd).name for rd in run_dirs])
        return rows


def time_variants(jobs: list[tuple[Variant, str]], data: dict[str, tuple[ModelCard, Any, dict]],
                  cfg: BenchConfig, *, progress: bool = False, desc: str = "measure") -> list[BenchRow]:
    """`bench`'s measurement for a caller that picks its own (variant, backend) pairs and accuracy split.

    `data` maps a run's folder name to (card, dataset, MAC cost); each row's accuracy is measured on
    that dataset's evaluation split, which `optimize` sets to the validation images, never the test
    ones. The jobs are timed in interleaved rounds, as one family of `bench`."""
    cfg.check()
    env = environment(cfg.threads)
    import torch

    saved_threads = torch.get_num_threads()
    numbers = (f"{i}/{len(jobs)}" for i in range(1, len(jobs) + 1))
    try:
        with tqdm(total=len(jobs) * (1 + cfg.rounds), desc=desc, unit="step", leave=False,
                  disable=None if progress else True) as bar:
            return _bench_family(jobs, data, cfg, env, bar, numbers)
    finally:
        torch.set_num_threads(saved_threads)


def _write(out: Path, rows: list[BenchRow], env: dict, cfg: BenchConfig, runs: list[str]) -> None:
    """bench.json last: its presence is what says the bench finished (the pipeline checks it)."""
    ensure_dir(out, what="--out")
    lines = [",".join(BENCH_COLUMNS)]
    for r in rows:
        lines.append(",".join(_csv_cell(r.get(c)) for c in BENCH_COLUMNS))
    write_bytes_atomic(out / "bench.csv", ("\n".join(lines) + "\n").encode())
    write_bytes_atomic(out / "bench.md", bench_markdown(rows, env, dataclasses.asdict(cfg)).encode())
    from cnndeploy.bench.plots import plot_all

    plot_all(rows, out)
    write_bench(out, rows, env, dataclasses.asdict(cfg), runs)


def _csv_cell(value: Any) -> str:
    text = "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
    return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text
