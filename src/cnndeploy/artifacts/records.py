"""The JSON records of a run directory, each with one reader and one writer.

Every record is JSON (never a pickle) in a folder users pass around, so readers accept only
the shape the writers produce. Every record is optional: an absent file reads as absent
({} or None). A file that is present but is not JSON, is nested too deep, is not an object,
or has a field of the wrong type is refused with one RecordError naming the file and the
field, since reading it as absent would let a later write replace what it held (quant.json)
or make a pruned run pass for an unpruned one (prune.json). bench.json's rows are the one
exception: a row not in the schema is dropped and the others are kept.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnndeploy.artifacts.files import BENCH, METRICS, OPTIMIZE, PRUNE, QAT, QUANT
from cnndeploy.errors import CheckpointError
from cnndeploy.fileio import read_json, write_json_atomic


class RecordError(CheckpointError):
    """A JSON record of a run directory is present but not what cnndeploy writes."""


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
        return None if schema_problem(cls, data) else cls._build(data)

    @classmethod
    def parse(cls, data: Any, path: Path):
        """The record in `data`, read from `path`; a RecordError naming the file and field if it is not one."""
        problem = schema_problem(cls, data)
        if problem:
            raise _bad(path, problem)
        return cls._build(data)

    @classmethod
    def _build(cls, data: dict[str, Any]):
        return cls(**{k: v for k, v in data.items() if k in _names(cls)})  # keys of newer writers are left out


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _bad(path: Path, problem: str) -> RecordError:
    return RecordError(f"{path} is not a record cnndeploy writes ({problem}); delete it to have it "
                       "written again, or restore the original")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _hint_text(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_hint_text(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.is_typeddict(hint) or dataclasses.is_dataclass(hint):
        return "an object"
    if typing.get_origin(hint) is not None or hint is Any:
        return str(hint).replace("typing.", "")
    return {dict: "an object", list: "a list"}.get(hint, getattr(hint, "__name__", str(hint)))


def _mismatch(value: Any, hint: Any, where: str) -> str | None:
    """Why a JSON value is not of type `hint` (the innermost field path and what was found), or None.

    Nested objects typed as a TypedDict or dataclass, `dict[str, X]` and `list[X]` are checked all the
    way down; keys of newer writers (not in the schema) are let through."""
    if hint is Any:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        problems = [_mismatch(value, h, where) for h in args]
        if all(problems):   # the deepest reason of the one alternative that is the same kind of value
            deep = [p for p, h in zip(problems, args) if isinstance(value, typing.get_origin(h) or _base(h))]
            return deep[0] if deep else f"field '{where}' must be {_hint_text(hint)}, got {_kind(value)}"
        return None
    if typing.is_typeddict(hint) or dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            return f"field '{where}' must be an object, got {_kind(value)}"
        hints = typing.get_type_hints(hint)
        required = hint.__required_keys__ if typing.is_typeddict(hint) else {
            f.name for f in dataclasses.fields(hint)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(set(required) - set(value))
        if missing:
            return f"field '{where}.{missing[0]}' is missing"
        return next((p for k, h in hints.items() if k in value
                     for p in [_mismatch(value[k], h, f"{where}.{k}")] if p), None)
    if origin is dict:
        if not isinstance(value, dict):
            return f"field '{where}' must be an object, got {_kind(value)}"
        return next((p for k, v in value.items() for p in [_mismatch(v, args[1], f"{where}.{k}")] if p), None) \
            if args else None
    if origin is list:
        if not isinstance(value, list):
            return f"field '{where}' must be a list, got {_kind(value)}"
        return next((p for i, v in enumerate(value) for p in [_mismatch(v, args[0], f"{where}[{i}]")] if p), None) \
            if args else None
    if hint is type(None):
        ok = value is None
    elif hint is float:  # JSON writes 1.0 as 1.0, but people and other tools write 1
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, origin or hint)
    return None if ok else f"field '{where}' must be {_hint_text(hint)}, got {_kind(value)}"


def _base(hint: Any) -> type:
    """The JSON kind a hint describes (an object for TypedDicts and dataclasses), for picking a union's branch."""
    if typing.is_typeddict(hint) or dataclasses.is_dataclass(hint):
        return dict
    if hint is float:
        return (int, float)  # type: ignore[return-value]
    return hint if isinstance(hint, type) else object


def fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type a dataclass field is annotated with (bools are no numbers),
    nested objects and lists included."""
    return _mismatch(value, hint, "") is None


def schema_problem(cls: type, data: Any, *, partial: bool = False) -> str | None:
    """What keeps `data` from being a `cls` record (the field path and the type found), or None.

    With `partial`, top-level fields may be missing; those present must still have their type.
    """
    if not isinstance(data, dict):
        return f"expected a JSON object, found {_kind(data)}"
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if not partial and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                return f"field '{f.name}' is missing"
        elif problem := _mismatch(data[f.name], hints[f.name], f.name):
            return problem
    return None


def read_object(path: Path) -> dict[str, Any]:
    """A JSON object from an optional file: {} when absent; a RecordError when it is not an object,
    and read_json's one-line error when it is not JSON (nested too deep included)."""
    if not path.is_file():
        return {}
    data = read_json(path, what=path.name)
    if not isinstance(data, dict):
        raise _bad(path, f"expected a JSON object, found {_kind(data)}")
    return data


class TrainSettings(typing.TypedDict, total=False):
    """The TrainConfig a run recorded (metrics.json's config): the fields its readers use."""
    model: str
    dataset: str
    epochs: int | None
    batch_size: int | None
    lr: float | None
    seed: int
    precision: str
    data_dir: str | None
    widths: dict[str, Any] | None
    teacher: str | None
    holdout: int
    holdout_seed: int


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
    config: TrainSettings = field(default_factory=dict)   # type: ignore[assignment]  # the TrainConfig it ran with

    def write(self, run: Path) -> None:
        write_json_atomic(Path(run) / METRICS, self.to_json())


def read_metrics(run: Path) -> dict[str, Any]:
    """metrics.json as written, {} when absent. An older file may lack fields, but those it has must
    have their type (a RecordError otherwise)."""
    path = Path(run) / METRICS
    data = read_object(path)
    problem = schema_problem(TrainMetrics, data, partial=True)
    if problem:
        raise _bad(path, problem)
    return data


class Measured(typing.TypedDict):
    """A network's cost and accuracy at one point of pruning (prune.json's before / after)."""
    macs: int
    params: int
    test_accuracy: float


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
    before: Measured
    pruned_before_finetune: Measured
    after_finetune: Measured
    macs_reduction: float
    params_reduction: float
    widths: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)   # the PruneConfig it ran with

    @classmethod
    def read(cls, run: Path) -> "PruneRecord | None":
        """prune.json, None when absent (a run trained from scratch); a RecordError when malformed."""
        path = Path(run) / PRUNE
        return cls.parse(read_object(path), path) if path.is_file() else None

    def write(self, run: Path) -> None:
        write_json_atomic(Path(run) / PRUNE, self.to_json())


def source_run(run: Path) -> Path | None:
    """The run a pruned run was made from (prune.json), or None for a run trained from scratch."""
    record = PruneRecord.read(run)
    return Path(record.source_run) if record else None


class QuantSettings(typing.TypedDict, total=False):
    """The QuantConfig an INT8 file was made with."""
    target: str
    method: str
    calib_size: int
    seed: int
    reduce_range: bool   # 7-bit weights (absent in files made before it was recorded: full range)


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
    config: QuantSettings = field(default_factory=dict)   # type: ignore[assignment]  # the QuantConfig it ran with


def read_quant(run: Path) -> dict[str, dict[str, Any]]:
    """quant.json: {file name: entry}, {} when absent; a RecordError when it or an entry is malformed
    (quant rewrites the whole file, so a misread one would lose the other entries)."""
    path = Path(run) / QUANT
    data = read_object(path)
    for name, entry in data.items():
        problem = schema_problem(QuantRecord, entry, partial=True)
        if problem:
            raise _bad(path, f"entry '{name}': {problem}")
    return data


def write_quant_entry(run: Path, record: QuantRecord) -> None:
    """Add or replace one entry; re-read first, since another quant of this run may have written."""
    entries = read_quant(run)
    entries[record.file] = record.to_json()
    write_json_atomic(Path(run) / QUANT, entries)


class ActivationQuant(typing.TypedDict):
    """The fixed per-tensor quantization of one Conv/Linear input, as trained and as written to the QDQ file."""
    module: str        # the layer whose input it is (its name in the PyTorch model)
    tensor: str        # the ONNX tensor it was forced on
    scale: float
    zero_point: int
    qmin: int
    qmax: int


@dataclass
class QatRecord(Record):
    """qat.json: how a quantization-aware fine-tuned run was made from its parent, and what it measured."""
    source_run: str
    file: str                     # the QDQ file written (model.int8-cpu.onnx | model.int8-trt.onnx)
    target: str
    epochs: int
    lr: float
    batch_size: int
    seconds: float                # the fine-tune epochs alone
    seconds_per_epoch: float
    train_images: int             # images the fine-tune trained on (the held-out ones excluded)
    holdout: int
    holdout_seed: int
    calib_size: int
    calib_split: str
    batchnorm: str                # how BatchNorm was treated in the fine-tune
    val_images: int
    val_accuracy_before: float | None   # fake-quant PyTorch model on the held-out images, before the fine-tune
    val_accuracy_after: float | None    # ... after it
    val_accuracy_int8: float | None     # the QDQ file itself (onnxruntime) on the held-out images
    activations: list[ActivationQuant] = field(default_factory=list)
    reduce_range: bool = False          # 7-bit weights (quant.ptq.reduce_range_for), modelled in the fake quant

    @classmethod
    def read(cls, run: Path) -> "QatRecord | None":
        """qat.json, None when absent; a RecordError when malformed."""
        path = Path(run) / QAT
        return cls.parse(read_object(path), path) if path.is_file() else None

    def write(self, run: Path) -> None:
        write_json_atomic(Path(run) / QAT, self.to_json())

@dataclass
class Candidate(Record):
    """One row of optimize.json: a file on a backend, at the search's batch size, and its verdict."""
    name: str                            # stage/file@backend[/compute precision]
    stage: str                           # p0, p30, p30-qat...: the candidate run directory inside candidates/
    prune_amount: float
    file: str
    backend: str
    precision: str                       # the file's, or the compute precision the backend ran it in
    status: str                          # ok | failed: <why> | skipped: <why>
    excluded_nodes: list[str] = field(default_factory=list)   # INT8 layers kept in float (fallback)
    qat_epochs: int = 0
    val_accuracy: float | None = None    # decisions: the validation split, never the test split
    val_drop_points: float | None = None  # the reference's validation accuracy minus this one's, x100
    within_budget: bool | None = None
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    throughput_ips: float | None = None
    spread: float | None = None          # the rounds' (max - min) / max throughput
    size_bytes: int | None = None
    macs: int | None = None
    test_accuracy: float | None = None   # finalists only: measured once, reported, never decided on
    final_throughput_ips: float | None = None   # finalists: the one interleaved run of all of them
    final_spread: float | None = None
    speedup_vs_reference: float | None = None   # final_throughput_ips / the reference's, same run
    reason: str | None = None            # why it was not chosen (measured)


@dataclass
class OptimizeRecord(Record):
    """optimize.json: the budget, the validation split, every candidate, and what was chosen and why."""
    source_run: str
    max_drop: float
    target: str
    batch_size: int
    backends: list[str]
    validation: dict[str, Any]           # size, seed, where it came from
    reference: dict[str, Any]            # FP32 PyTorch eager of the parent: the accuracy and speed baseline
    candidates: list[Candidate]
    chosen: str | None                   # a candidate's name; None when none is within budget
    best_file: str | None
    skipped: list[str]
    why_lost: list[str]
    sensitivity: dict[str, list[dict[str, Any]]]   # stage -> layers ranked, most sensitive first
    fallback: list[dict[str, Any]]
    qat: list[dict[str, Any]]
    time_budget_s: float | None
    elapsed_s: float
    finished: bool                       # False: the time budget ended the search early
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path) -> "OptimizeRecord":
        path = Path(folder) / OPTIMIZE
        record = cls.parse(read_object(path), path)
        record.candidates = [Candidate.parse(c, path) for c in record.candidates]  # type: ignore[arg-type]
        return record

    def write(self, folder: Path) -> None:
        write_json_atomic(Path(folder) / OPTIMIZE, self.to_json())


@dataclass
class BenchRow(Record):
    """One row of bench.json: one variant file on one backend at one batch size."""
    variant: str                         # run:precision, for people; `run` and `file` identify it
    run: str
    backend: str
    status: str                          # ok | skipped: <why> | failed: <why>
    file: str | None = None              # None: no file of this kind in the run (a skipped row)
    precision: str | None = None         # the file's, or the compute precision a backend ran it in (bf16)
    batch_size: int | None = None
    compute_precision: str | None = None  # what the math layers ran in, read back from the runtime (OpenVINO)
    batch_shape: str | None = None       # static (reshaped to batch_size) | dynamic | fixed in file (OpenVINO)
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
    compile_mode: str | None = None      # torch-compile: the torch.compile mode (reduce-overhead: CUDA graphs)
    compile_seconds: float | None = None  # torch-compile: compiling (and graph capture) for this batch size
    timed: str | None = None             # what the latency covers: "device-resident I/O" or host arrays (None)
    latency_ms_p50_with_copies: float | None = None  # device rows: p50 again with host->device->host copies
    slower_than_parent: bool | None = None   # slower than `parent` by more than `flag_tolerance`
    spread: float | None = None          # (max - min) / max of the throughput of the interleaved rounds
    round_throughputs: list[float] | None = None  # images/s of each interleaved round, in order (not in the csv)
    parent: str | None = None            # the FP32 variant this one is compared with, same batch size ...
    parent_backend: str | None = None    # ... on this backend (torch when the parent has no such file)
    speed_vs_parent: float | None = None  # throughput / the parent's
    flag_tolerance: float | None = None  # the noise allowed for: the larger spread of the two, or the floor
    slower_than_fp16: bool | None = None  # GPU INT8 ONNX rows (Q/DQ run in floating point): slower than the
                                          # run's FP16 file on the same backend and batch, beyond the noise


# bench.csv's columns, in the order people read them
BENCH_COLUMNS = ("variant", "run", "file", "backend", "precision", "compute_precision", "batch_size", "batch_shape",
                 "accuracy", "latency_ms_mean",
                 "latency_ms_std", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_ips",
                 "spread", "size_bytes", "params", "macs", "achieved_gops", "peak_share", "peak_mem_mb", "load_seconds",
                 "compile_mode", "compile_seconds", "timed", "latency_ms_p50_with_copies",
                 "parent", "parent_backend", "speed_vs_parent", "flag_tolerance", "slower_than_parent", "slower_than_fp16", "status")


class Peak(typing.TypedDict, total=False):
    fp32_gflops: float | None
    fp16_gflops: float | None
    int8_gops: float | None
    measured_ceiling_gflops: float | None
    basis: str


class Peaks(typing.TypedDict, total=False):
    cpu: Peak | None
    gpu: Peak | None


class GpuInfo(typing.TypedDict, total=False):
    name: str
    compute_capability: str
    driver: str | None


class BenchEnvironment(typing.TypedDict, total=False):
    """bench.json's environment: what report.md's environment line reads (bench/env.py writes it)."""
    cpu: str
    cpu_flags: list[str]
    cores: int | None
    threads: int | None
    gpu: GpuInfo | None
    versions: dict[str, str | None]
    git_commit: str | None
    peak: Peaks


# bench.json's top level; its rows are BenchRows, each dropped when not in the schema
BENCH_FILE = {"rows": list, "config": dict[str, Any], "environment": BenchEnvironment, "runs": list[str]}


def read_bench(folder: Path) -> dict[str, Any]:
    """bench.json: {"environment", "config", "runs", "rows": [BenchRow]}; rows not in the schema are dropped."""
    path = Path(folder) / BENCH
    data = read_object(path)
    for key, hint in BENCH_FILE.items():
        if key in data and (problem := _mismatch(data[key], hint, key)):
            raise _bad(path, problem)
    return {**data, "rows": [r for r in map(BenchRow.from_json, data.get("rows", [])) if r is not None]}


def write_bench(folder: Path, rows: list[BenchRow], env: dict[str, Any], config: dict[str, Any],
                runs: list[str]) -> None:
    write_json_atomic(Path(folder) / BENCH, {"environment": env, "config": config, "runs": runs,
                                            "rows": [r.to_json() for r in rows]})
