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


def read_object(path: Path) -> dict[str, Any]:
    """A JSON object from an optional file, {} when it is absent (a clear error when it is corrupt)."""
    if not path.is_file():
        return {}
    data = read_json(path, what=path.name)
    return data if isinstance(data, dict) else {}


def read_metrics(run: Path) -> dict[str, Any]:
    """metrics.json: written last by training, so its presence marks a finished run."""
    return read_object(Path(run) / METRICS)


def write_metrics(run: Path, metrics: dict[str, Any]) -> None:
    write_json_atomic(Path(run) / METRICS, metrics)


@dataclass
class PruneRecord:
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
        data = read_object(Path(run) / PRUNE)
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names}) if data else None
        except TypeError:  # fields missing: not a prune.json that prune wrote
            return None

    def write(self, run: Path) -> None:
        write_json_atomic(Path(run) / PRUNE, dataclasses.asdict(self))


def source_run(run: Path) -> Path | None:
    """The run a pruned run was made from (prune.json), or None for a run trained from scratch."""
    record = PruneRecord.read(run)
    return Path(record.source_run) if record else None


@dataclass
class QuantRecord:
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

    def __getitem__(self, key: str) -> Any:   # the CLI and tests read reports by key
        return getattr(self, key)


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
    entries[record.file] = dataclasses.asdict(record)
    write_json_atomic(Path(run) / QUANT, entries)


def read_bench(folder: Path) -> dict[str, Any]:
    """bench.json: {"environment": ..., "config": ..., "runs": [...], "rows": [...]}."""
    return read_object(Path(folder) / BENCH)


def write_bench(folder: Path, rows: list[dict[str, Any]], env: dict[str, Any], config: dict[str, Any],
                runs: list[str]) -> None:
    write_json_atomic(Path(folder) / BENCH, {"environment": env, "config": config, "runs": runs, "rows": rows})
