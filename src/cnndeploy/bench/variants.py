"""The deployable variants a run directory holds: weights, ONNX files, TensorRT engines."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnndeploy import rundir
from cnndeploy.export.tensorrt import ENGINE_RE

ONNX_FILES = {"model.onnx": "fp32", "model.int8-cpu.onnx": "int8-cpu", "model.int8-trt.onnx": "int8-trt"}


@dataclass(frozen=True)
class Variant:
    run: Path          # the run directory (model.json gives preprocessing and dataset)
    kind: str          # "weights", "onnx" or "engine"
    precision: str     # fp32, int8-cpu, int8-trt, fp16, int8
    path: Path

    @property
    def name(self) -> str:
        return f"{self.run.name}:{self.precision}"

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def discover(run_dir: str | os.PathLike) -> list[Variant]:
    """Every variant in RUN_DIR, weights first; raises if RUN_DIR holds no model at all."""
    run = Path(run_dir)
    rundir.read_model_json(run)  # a clear error for something that is not a run directory
    found = []
    if (run / rundir.WEIGHTS).is_file():
        found.append(Variant(run, "weights", "fp32", run / rundir.WEIGHTS))
    found += [Variant(run, "onnx", prec, run / name) for name, prec in ONNX_FILES.items() if (run / name).is_file()]
    for engine in sorted(run.glob("*.engine")):
        m = ENGINE_RE.search(engine.name)
        if m:
            found.append(Variant(run, "engine", m["precision"], engine))
    return found
