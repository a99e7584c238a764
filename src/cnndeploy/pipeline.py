"""`cnndeploy pipeline`: train -> prune + fine-tune -> ONNX -> INT8 -> TensorRT -> bench -> report.md.

Each stage is a make-like rule: it is skipped when all its outputs exist and are newer than
its inputs. Every artifact is written atomically (a final name appears only once the file is
complete), so "exists and fresh" means "complete", and an interrupted stage is simply redone:
an interrupted training run resumes from its checkpoint, an unfinished pruned run directory
is discarded and pruned again.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cnndeploy import rundir
from cnndeploy.errors import CnnDeployError
from cnndeploy.fileio import write_json_atomic

log = logging.getLogger("cnndeploy")


@dataclass
class PipelineConfig:
    dataset: str                       # mnist, cifar10 or a path
    models: list[str]
    out: str = "pipeline"
    epochs: str | int | None = None    # N for all, "lenet5=6,resnet18=2", or None (recipes)
    prune: float = 0.5                 # fraction of channels; 0 skips pruning
    finetune_epochs: int | None = None
    distill: bool = False              # fine-tune the pruned model against the unpruned one (KD)
    backends: list[str] = field(default_factory=lambda: ["torch", "ort", "ort-cuda", "tensorrt"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32, 256])
    threads: int | None = None
    min_seconds: float = 1.0
    device: str = "auto"
    precision: str = "auto"            # training compute, as `train --precision`
    seed: int = 0
    data_dir: str | None = None


@dataclass
class Stage:
    name: str
    outputs: list[Path]
    inputs: list[Path]
    action: Callable[[], Any]

    def complete(self) -> bool:
        if not all(p.is_file() for p in self.outputs):
            return False
        newest_input = max((p.stat().st_mtime for p in self.inputs if p.is_file()), default=0.0)
        return min(p.stat().st_mtime for p in self.outputs) >= newest_input


def parse_epochs(text: str | int | None, models: list[str]) -> dict[str, int | None]:
    """'8' -> every model 8; 'lenet5=6,resnet18=2' -> those models (others: their recipe)."""
    if text is None or text == "":
        return {m: None for m in models}
    if isinstance(text, int) or str(text).isdigit():
        value = int(text)
        if value < 1:
            raise CnnDeployError(f"--epochs {text}: expected a positive integer")
        return {m: value for m in models}
    out: dict[str, int | None] = {m: None for m in models}
    for item in str(text).split(","):
        name, _, value = item.partition("=")
        if name not in out or not value.isdigit() or int(value) < 1:
            raise CnnDeployError(f"--epochs {text!r}: expected N or model=N pairs for models "
                                 f"{', '.join(models)} (e.g. lenet5=6,resnet18=2)")
        out[name] = int(value)
    return out


def _check(cfg: PipelineConfig) -> dict[str, int | None]:
    from cnndeploy.bench.runners import check_backends
    from cnndeploy.models import list_models
    from cnndeploy.train.fit import check_precision

    unknown = [m for m in cfg.models if m not in list_models()]
    if unknown or not cfg.models:
        raise CnnDeployError(f"--models: unknown {unknown}; expected some of {', '.join(list_models())}")
    if len(set(cfg.models)) != len(cfg.models):
        raise CnnDeployError(f"--models {','.join(cfg.models)}: a model is named twice")
    if not 0 <= cfg.prune < 1:
        raise CnnDeployError(f"--prune {cfg.prune}: expected a fraction of channels in [0, 1) (0 skips pruning)")
    check_backends(cfg.backends)
    check_precision(cfg.precision)
    return parse_epochs(cfg.epochs, cfg.models)


def dataset_tag(dataset: str) -> str:
    return Path(dataset).name.split(".")[0] or "data"


def _train_stage(cfg: PipelineConfig, model: str, run: Path, epochs: int | None, progress: bool) -> Stage:
    from cnndeploy.train.fit import TrainConfig, train

    def action() -> None:
        resume = (run / rundir.CHECKPOINT).is_file()
        if resume:
            log.info("%s: an interrupted training run is here: resuming it", run)
        train(TrainConfig(model=model, dataset=cfg.dataset, out=str(run), epochs=epochs, seed=cfg.seed,
                          device=cfg.device, data_dir=cfg.data_dir, precision=cfg.precision),
              resume=resume, explicit={"epochs"} if epochs else set(), progress=progress)
    return Stage(f"{model}: train", [run / rundir.METRICS], [], action)


def _check_epochs(run: Path, epochs: int | None) -> None:
    """A finished run trained for a different number of epochs is not what was asked for."""
    done = rundir.read_json_if_exists(run / rundir.METRICS)
    if done and epochs is not None and done.get("epochs") != epochs:
        raise CnnDeployError(f"{run} was trained for {done.get('epochs')} epochs, not the {epochs} asked for; "
                             "choose another --out (nothing was changed)")


def _prune_stage(cfg: PipelineConfig, model: str, run: Path, pruned: Path, progress: bool) -> Stage:
    from cnndeploy.train.prune import prune_run

    def action() -> None:
        if pruned.exists():  # no prune.json: a fine-tune that never finished; it is ours to redo
            log.info("%s is incomplete (interrupted): pruning again", pruned)
            shutil.rmtree(pruned)
        prune_run(run, amount=cfg.prune, finetune_epochs=cfg.finetune_epochs, out=str(pruned),
                  data_dir=cfg.data_dir, device=cfg.device, distill=cfg.distill, progress=progress)
    return Stage(f"{model}: prune {round(100 * cfg.prune)}% + fine-tune",
                 [pruned / rundir.METRICS, pruned / "prune.json"], [run / rundir.WEIGHTS], action)


def _artifact_stages(cfg: PipelineConfig, label: str, run: Path) -> list[Stage]:
    from cnndeploy.export import export_onnx
    from cnndeploy.quant import quantize_run

    onnx = run / "model.onnx"
    stages = [Stage(f"{label}: export ONNX", [onnx], [run / rundir.WEIGHTS],
                    lambda: export_onnx(run, data_dir=cfg.data_dir))]
    for target, name in (("cpu", "model.int8-cpu.onnx"), ("tensorrt", "model.int8-trt.onnx")):
        stages.append(Stage(f"{label}: INT8 ({target})", [run / name], [onnx],
                            lambda t=target: quantize_run(run, target=t, data_dir=cfg.data_dir)))
    return stages


def _tensorrt_stages(label: str, run: Path) -> list[Stage]:
    """fp32, fp16 and int8 engines where TensorRT and a GPU exist; otherwise a stage that says why not."""
    from cnndeploy.export.tensorrt import build_engine, engine_name, require_tensorrt

    try:
        trt = require_tensorrt()
    except CnnDeployError as e:
        return [Stage(f"{label}: TensorRT engines", [], [], lambda msg=str(e): _skip(msg))]
    import torch

    cc = torch.cuda.get_device_capability()
    stages = []
    for precision in ("fp32", "fp16", "int8"):
        source = run / ("model.int8-trt.onnx" if precision == "int8" else "model.onnx")
        stages.append(Stage(f"{label}: TensorRT {precision}", [run / engine_name(precision, trt.__version__, cc)],
                            [source], lambda p=precision: build_engine(run, precision=p)))
    return stages


class Skipped(Exception):
    """A stage that cannot run on this machine (not an error: recorded and reported)."""


def _skip(message: str) -> None:
    raise Skipped(message)


def plan(cfg: PipelineConfig, *, progress: bool = True) -> tuple[list[Stage], list[Path]]:
    """The stages in order, and the run directories they produce."""
    epochs = _check(cfg)
    out, tag = Path(cfg.out), dataset_tag(cfg.dataset)
    stages: list[Stage] = []
    runs: list[Path] = []
    for model in cfg.models:
        run = out / f"{model}-{tag}"
        _check_epochs(run, epochs[model])
        stages.append(_train_stage(cfg, model, run, epochs[model], progress))
        stages += _artifact_stages(cfg, model, run)
        runs.append(run)
        if cfg.prune:
            pruned = out / f"{run.name}-pruned{round(100 * cfg.prune)}"
            stages.append(_prune_stage(cfg, model, run, pruned, progress))
            stages += _artifact_stages(cfg, f"{model} pruned", pruned)
            runs.append(pruned)
    for run in runs:
        stages += _tensorrt_stages(run.name, run)
    return stages, runs


def _bench_stage(cfg: PipelineConfig, runs: list[Path], progress: bool) -> Stage:
    from cnndeploy.bench.harness import run_bench

    bench = Path(cfg.out) / "bench"
    inputs = [p for run in runs for p in [run / rundir.WEIGHTS, *run.glob("*.onnx"), *run.glob("*.engine")]]
    return Stage("bench", [bench / "bench.json"], inputs,
                 lambda: run_bench(runs, backends=cfg.backends, batch_sizes=cfg.batch_sizes, threads=cfg.threads,
                                   out=bench, data_dir=cfg.data_dir, min_seconds=cfg.min_seconds,
                                   progress=progress))


def run_pipeline(cfg: PipelineConfig, *, progress: bool = True) -> Path:
    """Run every stage that is not complete yet; write pipeline.json and report.md; return the report path."""
    from cnndeploy.bench.report import write_report

    t0 = time.perf_counter()
    out = Path(cfg.out)
    stages, runs = plan(cfg, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    record: list[dict[str, Any]] = []
    total = len(stages) + 1
    for i, stage in enumerate(stages, 1):
        record.append(_run_stage(stage, f"[{i}/{total}]"))
        write_json_atomic(out / "pipeline.json", _summary(cfg, record, time.perf_counter() - t0))
    # Built last: its inputs are the artifacts the stages above have just written.
    record.append(_run_stage(_bench_stage(cfg, runs, progress), f"[{total}/{total}]"))
    summary = _summary(cfg, record, time.perf_counter() - t0)
    write_json_atomic(out / "pipeline.json", summary)
    return write_report(out, runs=runs, bench_dir=out / "bench", pipeline=summary)


def _run_stage(stage: Stage, counter: str) -> dict[str, Any]:
    if stage.outputs and stage.complete():
        log.info("%s %s: complete already, skipped", counter, stage.name)
        return {"stage": stage.name, "status": "complete already", "seconds": 0.0}
    if stage.outputs:
        log.info("%s %s", counter, stage.name)
    t = time.perf_counter()
    try:
        stage.action()
    except Skipped as e:
        log.info("%s %s: skipped (%s)", counter, stage.name, e)
        return {"stage": stage.name, "status": f"skipped: {e}", "seconds": 0.0}
    return {"stage": stage.name, "status": "ran", "seconds": round(time.perf_counter() - t, 1)}


def _summary(cfg: PipelineConfig, record: list[dict], wall: float) -> dict[str, Any]:
    return {"dataset": cfg.dataset, "models": cfg.models, "prune": cfg.prune, "epochs": cfg.epochs,
            "data_dir": cfg.data_dir and os.fspath(cfg.data_dir), "stages": record,
            "wall_seconds_this_call": round(wall, 1)}
