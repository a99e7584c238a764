"""The JSON records of a run directory, each with one reader and one writer.

Every record is JSON (never a pickle) in a folder users pass around, so readers accept only
the shape the writers produce: a record that is absent or malformed reads as absent.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnndeploy.artifacts.files import BENCH, METRICS, PRUNE, QUANT
from cnndeploy.fileio import read_json, write_json_atomic


class Record:
    """A JSON record as a dataclass. Dict-style reads (`r["x"]`, `r.get("x")`) serve the scripts and
    tests that index reports by key; the fields are the schema."""

    def __getitem__(self, key: str) -> Any:
        if key not in _names(type(self)):
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in _names(type(self)) else default

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, data: Any):
        """The record, or None when `data` is not what the writer writes (missing or ill-typed fields)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(**{k: v for k, v in data.items() if k in _names(cls)})
        except TypeError:
            return None


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def read_object(path: Path) -> dict[str, Any]:
    """A JSON object from an optional file, {} when it is absent (a clear error when it is corrupt)."""
    if not path.is_file():
        return {}
    data = read_json(path, what=path.name)
    return data if isinstance(data, dict) else {}


@dataclass
class TrainMetrics(Record):
    """metrics.json: written last by training, so its presence marks a finished run."""
    test_accuracy: float
    test_loss: float
    best_test_accuracy: float
    best_epoch: int
    epochs: int
    train_images: int
    test_images: int
    seconds_in_epochs: float
    wall_seconds: float
    train_images_per_second: float
    params: int
    device: str
    torch: str
    dataset_source: str
    world_size: int
    config: dict[str, Any] = field(default_factory=dict)   # the TrainConfig it ran with (resolved)

    def write(self, run: Path) -> None:
        write_json_atomic(Path(run) / METRICS, self.to_json())


def read_metrics(run: Path) -> dict[str, Any]:
    """metrics.json as written, {} when absent (a foreign or older file keeps whatever keys it has)."""
    return read_object(Path(run) / METRICS)


@dataclass
class PruneRecord(Record):
    """prune.json: how a pruned run was made from its parent, and what it cost and bought."""
    source_run: str
    amount: float
    method: str
    round_to: int | None
    finetune_epochs: int
    finetune_lr: float
    finetune_precision: str
    finetune_teacher: str | None
    before: dict[str, Any]
    pruned_before_finetune: dict[str, Any]
    after_finetune: dict[str, Any]
    macs_reduction: float
    params_reduction: float
    widths: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)   # the PruneConfig it ran with

    @classmethod
    def read(cls, run: Path) -> "PruneRecord | None":
        return cls.from_json(read_object(Path(run) / PRUNE))

    def write(self, run: Path) -> None:
        write_json_atomic(Path(run) / PRUNE, self.to_json())


def source_run(run: Path) -> Path | None:
    """The run a pruned run was made from (prune.json), or None for a run trained from scratch."""
    record = PruneRecord.read(run)
    return Path(record.source_run) if record else None


@dataclass
class QuantRecord(Record):
    """One entry of quant.json (one per quantized file): calibration, accuracy and size."""
    file: str
    target: str
    method: str
    calib_size: int
    calib_seed: int
    calib_split: str
    fp32_accuracy: float
    int8_accuracy: float
    accuracy_drop_points: float
    fp32_bytes: int
    int8_bytes: int
    test_images: int
    dataset_source: str
    fp32_sha256: str
    test_set_sha256: str
    config: dict[str, Any] = field(default_factory=dict)   # the QuantConfig it ran with


def read_quant(run: Path) -> dict[str, dict[str, Any]]:
    """quant.json: {file name: entry}; entries that are not objects are dropped."""
    path = Path(run) / QUANT
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (ValueError, OSError):
        data = {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def write_quant_entry(run: Path, record: QuantRecord) -> None:
    """Add or replace one entry; re-read first, since another quant of this run may have written."""
    entries = read_quant(run)
    entries[record.file] = record.to_json()
    write_json_atomic(Path(run) / QUANT, entries)


@dataclass
class BenchRow(Record):
    """One row of bench.json: one variant file on one backend at one batch size."""
    variant: str                         # run:precision, for people; `run` and `file` identify it
    run: str
    backend: str
    status: str                          # ok | skipped: <why> | failed: <why>
    file: str | None = None              # None: no file of this kind in the run (a skipped row)
    precision: str | None = None
    batch_size: int | None = None
    size_bytes: int | None = None
    params: int | None = None
    macs: int | None = None
    accuracy: float | None = None        # whole test set, through this very backend and file
    latency_ms_mean: float | None = None
    latency_ms_std: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_p99: float | None = None
    throughput_ips: float | None = None
    achieved_gops: float | None = None
    peak_share: float | None = None
    peak_mem_mb: float | None = None
    peak_mem_kind: str | None = None
    load_seconds: float | None = None
    slower_than_parent: bool | None = None   # slower than `parent` by more than `flag_tolerance`
    spread: float | None = None          # (max - min) / max of the throughput of the interleaved rounds
    parent: str | None = None            # the FP32 variant this one is compared with, same batch size ...
    parent_backend: str | None = None    # ... on this backend (torch when the parent has no such file)
    speed_vs_parent: float | None = None  # throughput / the parent's
    flag_tolerance: float | None = None  # the noise allowed for: the larger spread of the two, or the floor


# bench.csv's columns, in the order people read them
BENCH_COLUMNS = ("variant", "run", "file", "backend", "precision", "batch_size", "accuracy", "latency_ms_mean",
                 "latency_ms_std", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_ips",
                 "spread", "size_bytes", "params", "macs", "achieved_gops", "peak_share", "peak_mem_mb", "load_seconds",
                 "parent", "parent_backend", "speed_vs_parent", "flag_tolerance", "slower_than_parent", "status")


def read_bench(folder: Path) -> dict[str, Any]:
    """bench.json: {"environment", "config", "runs", "rows": [BenchRow]}; rows not in the schema are dropped."""
    data = read_object(Path(folder) / BENCH)
    rows = data.get("rows") if isinstance(data.get("rows"), list) else []
    return {**data, "rows": [r for r in map(BenchRow.from_json, rows) if r is not None]}


def write_bench(folder: Path, rows: list[BenchRow], env: dict[str, Any], config: dict[str, Any],
                runs: list[str]) -> None:
    write_json_atomic(Path(folder) / BENCH, {"environment": env, "config": config, "runs": runs,
                                            "rows": [r.to_json() for r in rows]})
