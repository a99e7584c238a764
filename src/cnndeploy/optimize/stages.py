"""The candidates' files: one run directory per pruning amount (and per QAT), each with its ONNX
and INT8 files, made by the same commands a user would run (prune, export, quant), so every
candidate is an ordinary run directory that bench, eval and the demo also accept."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnndeploy.artifacts import files as layout
from cnndeploy.artifacts.files import FileSpec, spec
from cnndeploy.data.holdout import Holdout


@dataclass
class Stage:
    """One candidate run directory and the files of it that are measured."""
    name: str                  # p0, p30, p30-qat
    run: Path
    amount: float
    qat_epochs: int = 0
    files: list[FileSpec] = field(default_factory=list)
    excluded: dict[str, list[str]] = field(default_factory=dict)   # file name -> INT8 layers kept in float
    seconds: float = 0.0       # what making it cost (prune + fine-tune, or QAT)
    distill: bool = False
    trial_seconds: float = 0.0  # the distillation trial's extra fine-tune, which later amounts do not repeat
    reused: bool = False        # copied from an earlier search (--reuse): its cost says nothing of the next


def stage_name(amount: float, qat: bool = False) -> str:
    return f"p{round(100 * amount)}" + ("-qat" if qat else "")


def copy_parent(parent: Path, dest: Path) -> None:
    """The unpruned candidate: the parent's weights and records, copied (optimize never writes into RUN_DIR)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (layout.MODEL_JSON, layout.WEIGHTS, layout.METRICS, layout.PRUNE):
        if (parent / name).is_file() and not (dest / name).is_file():
            shutil.copy2(parent / name, dest / name)


def ensure_onnx(stage: Stage, data_dir: str | None) -> FileSpec:
    from cnndeploy.export import export_onnx

    if not (stage.run / layout.ONNX).is_file():
        export_onnx(stage.run, data_dir=data_dir)
    return spec(layout.ONNX)


def int8_spec(quant_target: str, excluded: int = 0) -> FileSpec:
    """The run-directory row of the INT8 file, or a fallback file with `excluded` layers in float."""
    base = spec(layout.QUANT_TARGETS[quant_target])
    if not excluded:
        return base
    stem = base.name.removesuffix(".onnx")
    return FileSpec(f"{stem}.fb{excluded}.onnx", "onnx", base.precision,
                    f"{base.label}, {excluded} layer{'s' if excluded > 1 else ''} in float",
                    "cnndeploy optimize", layout.ONNX)


def make_int8(stage: Stage, calib: np.ndarray, quant_target: str, exclude: list[str] = ()) -> FileSpec:
    """Quantize the stage's model.onnx (minmax, per-channel QDQ) with the given layers kept in float."""
    from cnndeploy.quant.ptq import quantize_file

    row = int8_spec(quant_target, len(exclude))
    quantize_file(stage.run / layout.ONNX, stage.run / row.name, calib, target=quant_target, method="minmax",
                  nodes_to_exclude=list(exclude))
    stage.excluded[row.name] = list(exclude)
    return row


def prune_stage(parent: Path, dest: Path, amount: float, *, holdout: Holdout, finetune_epochs: int | None,
                distill: bool, data_dir: str | None, progress: bool) -> None:
    """`cnndeploy prune PARENT --amount A [--distill]` into `dest`, its fine-tune kept off the validation images."""
    from cnndeploy.train.prune import PruneConfig, prune_run

    prune_run(parent, PruneConfig(amount=amount, finetune_epochs=finetune_epochs, distill=distill,
                                  holdout=holdout.size, holdout_seed=holdout.seed),
              out=str(dest), data_dir=data_dir, progress=progress)
