"""Every file a run directory can hold, in one table: what it is, what it is made from, who runs it.

Producers (train, export, quant, TensorRT) take their output names from here, and consumers
(bench, the demo, Triton, the pipeline, report.md) discover and label files from here, so a new
kind of deployable file is one row in `FILES` plus the code that writes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

# Records and other fixed names of a run directory (and of a pipeline folder).
MODEL_JSON, METRICS, LOG, CURVES = "model.json", "metrics.json", "log.jsonl", "curves.png"
CHECKPOINT = "checkpoint.safetensors"
PRUNE, QUANT, BENCH, PIPELINE, REPORT = "prune.json", "quant.json", "bench.json", "pipeline.json", "report.md"
QAT = "qat.json"   # how a quantization-aware fine-tuned run was made from its parent (quant/qat.py)
BENCH_DIR = "bench"
PRUNE_INIT = "pruned-init.safetensors"   # a pruned run's starting weights, before its fine-tune
LOCK = ".cnndeploy.lock"   # held (flock) by the one command writing a folder: artifacts/lock.py
# `cnndeploy optimize --out DIR`: the search's record and report, its plot, the file it chose,
# and that file's ONNX metadata key holding its lineage (JSON) and the budget it meets.
OPTIMIZE, OPTIMIZE_MD, PARETO, BEST = "optimize.json", "optimize.md", "pareto.png", "best.onnx"
OPTIMIZE_WORK = "candidates"    # the candidates' run directories inside DIR
LINEAGE_KEY = "cnndeploy_lineage"

FLOAT_INPUT = "float32 NCHW, normalised"
UINT8_INPUT = "uint8 NHWC pixels, normalisation inside"

# Which backends execute which kind of file.
BACKENDS_BY_KIND: dict[str, tuple[str, ...]] = {
    "weights": ("torch", "torch-compile"),
    "onnx": ("ort", "ort-cuda", "ort-trt", "openvino"),
    "engine": ("tensorrt",),
}


@dataclass(frozen=True)
class FileSpec:
    name: str                  # file name inside a run directory
    kind: str                  # weights | onnx | engine
    precision: str             # fp32, fp16, int8-cpu, int8-trt, int8
    label: str                 # how tables name it
    made_by: str               # the command that writes it
    source: str | None         # the file of the same run it is made from
    input: str = FLOAT_INPUT
    triton_suffix: str | None = None    # Triton model <run><suffix>; None: not put in a Triton repository
    triton_instance: str | None = None  # forced instance kind; None: the user's choice

    @property
    def backends(self) -> tuple[str, ...]:
        return BACKENDS_BY_KIND[self.kind]

    @property
    def classifies(self) -> bool:
        """Takes normalised float32 NCHW: benchmarked, served by the demo, run by `Classifier`."""
        return self.input == FLOAT_INPUT


WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
FILES: tuple[FileSpec, ...] = (
    FileSpec(WEIGHTS, "weights", "fp32", "FP32", "cnndeploy train", None),
    FileSpec(ONNX, "onnx", "fp32", "FP32", "cnndeploy export RUN_DIR --onnx", WEIGHTS, triton_suffix=""),
    FileSpec("model.fp16.onnx", "onnx", "fp16", "FP16", "cnndeploy export RUN_DIR --onnx --fp16-onnx", WEIGHTS,
             triton_suffix="-fp16"),
    FileSpec("model.uint8.onnx", "onnx", "fp32", "FP32 (uint8 input)",
             "cnndeploy export RUN_DIR --onnx --with-preprocess", WEIGHTS, input=UINT8_INPUT, triton_suffix="-uint8"),
    # uint8 activations are the fast form for x86 VNNI kernels: a CPU model wherever it is served
    FileSpec("model.int8-cpu.onnx", "onnx", "int8-cpu", "INT8 (cpu)", "cnndeploy quant RUN_DIR --target cpu", ONNX,
             triton_suffix="-int8-cpu", triton_instance="cpu"),
    FileSpec("model.int8-trt.onnx", "onnx", "int8-trt", "INT8 (trt)", "cnndeploy quant RUN_DIR --target tensorrt",
             ONNX),
    # whatever `optimize` chose (pruned, INT8 or float): its metadata's LINEAGE_KEY says which
    FileSpec(BEST, "onnx", "best", "chosen by optimize", "cnndeploy optimize RUN_DIR --max-drop X", None,
             triton_suffix="-best"),
)
# Compute precisions a backend offers for a file beyond the file's own: OpenVINO computes the FP32
# ONNX file in bf16 where the CPU has bf16 instructions; torch casts the FP32 weights to fp16 and
# bf16 (channels_last) on a CUDA GPU only. Such a row keeps its `file` (model.onnx,
# model.safetensors) and says `precision`; no file of its own is written.
COMPUTE_PRECISIONS: dict[tuple[str, str], tuple[str, ...]] = {("openvino", ONNX): ("bf16",), ("openvino", BEST): ("bf16",),
                                                              ("torch", WEIGHTS): ("fp16", "bf16")}
QUANT_TARGETS = {"cpu": "model.int8-cpu.onnx", "tensorrt": "model.int8-trt.onnx"}

# TensorRT engines are tied to the TensorRT version and the GPU, so both are in the name.
ENGINE_SOURCES = {"fp32": ONNX, "fp16": ONNX, "int8": QUANT_TARGETS["tensorrt"]}
ENGINE_MAX_BATCH = 256   # engines are built with an optimisation profile for batches 1..this
ENGINE_RE = re.compile(r"\.(?P<precision>fp32|fp16|int8)\.trt(?P<trt>[\d.]+)\.sm(?P<sm>\d+)\.engine$")
_ENGINE = FileSpec("", "engine", "", "", "cnndeploy export RUN_DIR --trt", None, triton_instance="gpu")


def spec(name: str) -> FileSpec:
    """The table's row for a fixed file name (KeyError for a name not in the table)."""
    for row in FILES:
        if row.name == name:
            return row
    raise KeyError(f"{name} is not a file of the run-directory table")


def compute_spec(base: FileSpec, precision: str) -> FileSpec:
    """The row of `base` computed in `precision` by a backend (COMPUTE_PRECISIONS): same file, own label."""
    return replace(base, precision=precision, label=f"{precision.upper()} compute of {base.label}",
                   triton_suffix=None)


def row_label(file: str | None, precision: str | None) -> str:
    """How tables name a bench row: the file's label, or its compute label where a backend ran the
    file in another precision (bf16 of model.onnx)."""
    fixed = next((s for s in FILES if s.name == file), None)
    if fixed is None:
        return (precision or "").upper()
    return fixed.label if precision in (None, fixed.precision) else compute_spec(fixed, precision).label


def engine_name(precision: str, trt_version: str, capability: tuple[int, int]) -> str:
    return f"model.{precision}.trt{trt_version}.sm{capability[0]}{capability[1]}.engine"


def engine_spec(name: str) -> FileSpec | None:
    """The row of an engine file named by `engine_name`, or None for any other name."""
    m = ENGINE_RE.search(name)
    if not m:
        return None
    p = m["precision"]
    flag = {"fp32": "", "fp16": " --fp16", "int8": " --int8"}[p]
    return replace(_ENGINE, name=name, precision=p, label=f"TensorRT {p.upper()}",
                   made_by=_ENGINE.made_by + flag, source=ENGINE_SOURCES[p], triton_suffix=f"-trt-{p}")


def spec_of(path: Path) -> FileSpec | None:
    """The row describing `path`, or None when the run-directory table has no such file."""
    fixed = next((s for s in FILES if s.name == path.name), None)
    return fixed or (engine_spec(path.name) if path.suffix == ".engine" else None)


def deployable(run: Path) -> list[tuple[FileSpec, Path]]:
    """Every file of the table present in `run`, in table order, engines last (sorted by name)."""
    found = [(s, run / s.name) for s in FILES if (run / s.name).is_file()]
    engines = [(e, p) for p in sorted(run.glob("*.engine")) if (e := engine_spec(p.name)) and p.is_file()]
    return found + engines


def pruned_run_name(run_name: str, amount: float) -> str:
    """The folder a pruned copy of `run_name` goes to by default."""
    return f"{run_name}-pruned{round(100 * amount)}"


PRECISION_ORDER = ("fp32", "bf16", "fp16", "int8-cpu", "int8-trt", "int8", "best")


def made_by(kind: str) -> str:
    """The command that makes the first file of `kind` (weights, onnx, engine): a hint for rows that lack one."""
    return next((s.made_by for s in FILES if s.kind == kind), _ENGINE.made_by)
