"""`cnndeploy pipeline`: train -> prune + fine-tune -> ONNX -> INT8 -> TensorRT -> bench -> report.md.

Each stage is a make-like rule: it is skipped when all its outputs exist, are newer than its
inputs, and were made with the options asked for now (each stage records the config it ran
with). Every artifact is written atomically (a final name appears only once the file is
complete), so "exists and fresh" means "complete", and an interrupted stage is simply redone:
an interrupted training run resumes from its checkpoint, an unfinished pruned run directory
is discarded and pruned again. A finished training run is never retrained: asked for other
hyper-parameters, the pipeline refuses and names them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import ExitStack
from typing import Any, Callable

from cnndeploy.artifacts import files as layout
from cnndeploy.artifacts import lock, records
from cnndeploy.bench.harness import BenchConfig
from cnndeploy.errors import CnnDeployError
from cnndeploy.fileio import ensure_dir, write_json_atomic
from cnndeploy.quant.ptq import QuantConfig
from cnndeploy.train.fit import fitted_batch_size, with_later_fields
from cnndeploy.train.prune import PruneConfig

log = logging.getLogger("cnndeploy")
# Where and how a run is computed, not what it computes: may differ from the recorded run.
PLACE_NOT_RECIPE = ("out", "device", "data_dir", "download", "model", "dataset", "init_weights", "teacher")


@dataclass
class PipelineConfig:
    dataset: str                       # mnist, cifar10 or a path
    models: list[str]
    out: str = "runs/pipeline"
    epochs: str | int | None = None    # N for all, "lenet5=6,resnet18=2", or None (recipes)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"            # training compute, as `train --precision`
    data_dir: str | None = None
    prune: PruneConfig | None = field(default_factory=PruneConfig)   # None: no pruned variants
    quant: QuantConfig = field(default_factory=QuantConfig)          # run for both targets
    bench: BenchConfig = field(default_factory=lambda: default_bench())
    holdout: int = 0                   # training images kept out as the validation split (train --holdout)
    optimize: Any = None               # an OptimizeConfig: `optimize` each trained model after the bench

    def train_config(self, model: str, out: Path, epochs: int | None):
        from cnndeploy.train.fit import TrainConfig

        return TrainConfig(model=model, dataset=self.dataset, out=str(out), epochs=epochs, seed=self.seed,
                           device=self.device, data_dir=self.data_dir, precision=self.precision,
                           holdout=self.holdout)

    def to_json(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def default_bench() -> BenchConfig:
    """The pipeline measures every backend it knows; the absent ones become skipped rows."""
    return BenchConfig(backends=["torch", "ort", "ort-cuda", "openvino", "tensorrt"], batch_sizes=[1, 32, 256])


def pipeline_config(*, dataset: str, models: list[str], prune: float = 0.5, finetune_epochs: int | None = None,
                    distill: bool = False, backends: list[str] | None = None, batch_sizes: list[int] | None = None,
                    threads: int | None = None, min_seconds: float = 1.0, max_drop: float | None = None,
                    time_budget: float | None = None, **common: Any) -> PipelineConfig:
    """A PipelineConfig from the command line's flat options (prune 0: no pruned variants)."""
    if not 0 <= prune < 1:
        raise CnnDeployError(f"--prune {prune}: expected a fraction of channels in [0, 1) (0 skips pruning)")
    bench = dataclasses.replace(default_bench(), threads=threads, min_seconds=min_seconds,
                                **({"backends": backends} if backends else {}),
                                **({"batch_sizes": batch_sizes} if batch_sizes else {}))
    pruning = PruneConfig(amount=prune, finetune_epochs=finetune_epochs, distill=distill) if prune else None
    optimize = None
    if max_drop is not None:
        from cnndeploy.optimize import OptimizeConfig

        optimize = OptimizeConfig(max_drop=max_drop, time_budget=time_budget, threads=threads,
                                  finetune_epochs=finetune_epochs).check()
    return PipelineConfig(dataset=dataset, models=models, prune=pruning, bench=bench, optimize=optimize, **common)


def _plain(value: Any) -> Any:
    """As JSON would give it back (tuples become lists), so a recorded config compares equal."""
    return json.loads(json.dumps(value, default=str))


@dataclass
class Stage:
    name: str
    outputs: list[Path]
    inputs: list[Path]
    action: Callable[[], Any]
    wanted: dict[str, Any] | None = None                       # the config this stage runs with ...
    recorded: Callable[[], dict[str, Any] | None] | None = None  # ... and the one its outputs were made with

    def stale(self) -> str | None:
        """Why the stage must run, or None when its outputs are complete, fresh and made as asked."""
        if not all(p.is_file() for p in self.outputs):
            return "outputs missing"
        newest_input = max((p.stat().st_mtime for p in self.inputs if p.is_file()), default=0.0)
        if min(p.stat().st_mtime for p in self.outputs) < newest_input:
            return "inputs changed"
        if self.wanted is not None and self.recorded is not None:
            recorded = self.recorded()
            if recorded is None or _plain(recorded) != _plain(self.wanted):
                return f"made with other options ({_difference(recorded, self.wanted)})"
        return None

    def complete(self) -> bool:
        return self.stale() is None


def _difference(recorded: dict | None, wanted: dict) -> str:
    if not recorded:
        return "none recorded"
    keys = sorted(k for k in set(recorded) | set(wanted) if _plain(recorded.get(k)) != _plain(wanted.get(k)))
    return ", ".join(f"{k}: {recorded.get(k)!r} -> {wanted.get(k)!r}" for k in keys)


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
    from cnndeploy.models import list_models
    from cnndeploy.train.fit import check_precision

    unknown = [m for m in cfg.models if m not in list_models()]
    if unknown or not cfg.models:
        raise CnnDeployError(f"--models: unknown {unknown}; expected some of {', '.join(list_models())}")
    if len(set(cfg.models)) != len(cfg.models):
        raise CnnDeployError(f"--models {','.join(cfg.models)}: a model is named twice")
    if cfg.prune is not None:
        cfg.prune.check()
    cfg.quant.check()
    cfg.bench.check()
    check_precision(cfg.precision)
    return parse_epochs(cfg.epochs, cfg.models)


def dataset_tag(dataset: str) -> str:
    return Path(dataset).name.split(".")[0] or "data"


def _train_stage(cfg: PipelineConfig, model: str, run: Path, epochs: int | None, progress: bool) -> Stage:
    from cnndeploy.train.fit import train

    train_cfg = cfg.train_config(model, run, epochs)

    def action() -> None:
        resume = (run / layout.CHECKPOINT).is_file()
        if resume:
            log.info("%s: an interrupted training run is here: resuming it", run)
        train(train_cfg, resume=resume, explicit={"epochs"} if epochs else set(), progress=progress)
    return Stage(f"{model}: train", [run / layout.METRICS], [], action)


def _check_finished_run(cfg: PipelineConfig, model: str, run: Path, epochs: int | None) -> None:
    """A finished run trained with other hyper-parameters is not what was asked for, and is not retrained."""
    done = records.read_metrics(run)
    if not done:
        return
    if epochs is not None and done.get("epochs") != epochs:
        raise CnnDeployError(f"{run} was trained for {done.get('epochs')} epochs, not the {epochs} asked for; "
                             "choose another --out (nothing was changed)")
    wanted = dataclasses.asdict(cfg.train_config(model, run, epochs).resolved())
    recorded = with_later_fields(done.get("config") or {})  # runs from before those fields existed
    if isinstance(wanted.get("batch_size"), int) and isinstance(done.get("train_images"), int):
        # a batch larger than the training split was trained (and recorded) as the whole split
        wanted["batch_size"] = fitted_batch_size(wanted["batch_size"], done["train_images"],
                                                 done.get("world_size") or 1)
    clash = {k: (recorded.get(k), v) for k, v in wanted.items()
             if k not in PLACE_NOT_RECIPE and _plain(recorded.get(k)) != _plain(v)}
    if clash:
        raise CnnDeployError(f"{run} was trained with other options ("
                             + ", ".join(f"{k} {a!r}, asked {b!r}" for k, (a, b) in sorted(clash.items()))
                             + "); choose another --out (nothing was changed)")


def _prune_stage(cfg: PipelineConfig, model: str, run: Path, pruned: Path, progress: bool) -> Stage:
    from cnndeploy.train.prune import prune_run

    assert cfg.prune is not None
    wanted = dataclasses.asdict(cfg.prune)

    def action() -> None:
        leftovers = _held_files(pruned)
        if leftovers:  # unfinished, or made with other options: the pipeline's own folder to redo
            log.info("%s is incomplete or was pruned with other options: pruning again", pruned)
            for p in leftovers:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        prune_run(run, cfg.prune, out=str(pruned), data_dir=cfg.data_dir, device=cfg.device, progress=progress)

    def recorded() -> dict | None:
        record = records.PruneRecord.read(pruned)
        return record.config if record else None
    return Stage(f"{model}: prune {round(100 * cfg.prune.amount)}% + fine-tune",
                 [pruned / layout.METRICS, pruned / layout.PRUNE], [run / layout.WEIGHTS], action, wanted, recorded)


def _held_files(folder: Path) -> list[Path]:
    """What `folder` holds but its lock file (the pipeline holds that lock for the whole run)."""
    return [p for p in folder.iterdir() if p.name != layout.LOCK] if folder.is_dir() else []


def _artifact_stages(cfg: PipelineConfig, label: str, run: Path) -> list[Stage]:
    from cnndeploy.export import export_onnx
    from cnndeploy.quant import quantize_run

    onnx = run / layout.ONNX
    stages = [Stage(f"{label}: export ONNX", [onnx, run / layout.spec("model.fp16.onnx").name],
                    [run / layout.WEIGHTS], lambda: export_onnx(run, data_dir=cfg.data_dir, fp16=True))]
    for target, name in layout.QUANT_TARGETS.items():
        quant = dataclasses.replace(cfg.quant, target=target)
        stages.append(Stage(f"{label}: INT8 ({target})", [run / name], [onnx],
                            lambda q=quant: quantize_run(run, q, data_dir=cfg.data_dir),
                            dataclasses.asdict(quant.resolved()),
                            lambda n=name: _quant_config(run, n)))
    return stages


def _quant_config(run: Path, name: str) -> dict | None:
    """The recorded QuantConfig of an INT8 file; files from before reduce_range was recorded had full-range weights."""
    config = records.read_quant(run).get(name, {}).get("config")
    return {"reduce_range": False, **config} if isinstance(config, dict) else config


def _tensorrt_stages(label: str, run: Path) -> list[Stage]:
    """fp32, fp16 and int8 engines where TensorRT and a GPU exist; otherwise a stage that says why not."""
    from cnndeploy.export.tensorrt import build_engine
    from cnndeploy.runtime.tensorrt import require_tensorrt

    try:
        trt = require_tensorrt()
    except CnnDeployError as e:
        return [Stage(f"{label}: TensorRT engines", [], [], lambda msg=str(e): _skip(msg))]
    import torch

    cc = torch.cuda.get_device_capability()
    return [Stage(f"{label}: TensorRT {precision}", [run / layout.engine_name(precision, trt.__version__, cc)],
                  [run / source], lambda p=precision: build_engine(run, precision=p))
            for precision, source in layout.ENGINE_SOURCES.items()]


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
        _check_finished_run(cfg, model, run, epochs[model])
        stages.append(_train_stage(cfg, model, run, epochs[model], progress))
        stages += _artifact_stages(cfg, model, run)
        runs.append(run)
        if cfg.prune is not None:
            pruned = out / layout.pruned_run_name(run.name, cfg.prune.amount)
            stages.append(_prune_stage(cfg, model, run, pruned, progress))
            stages += _artifact_stages(cfg, f"{model} pruned", pruned)
            runs.append(pruned)
    for run in runs:
        stages += _tensorrt_stages(run.name, run)
    return stages, runs


def _bench_stage(cfg: PipelineConfig, runs: list[Path], progress: bool) -> Stage:
    from cnndeploy.bench.harness import run_bench

    bench = Path(cfg.out) / layout.BENCH_DIR
    inputs = [p for run in runs for p in [run / layout.WEIGHTS, *run.glob("*.onnx"), *run.glob("*.engine")]]
    wanted = {**dataclasses.asdict(cfg.bench), "runs": [r.name for r in runs]}

    def recorded() -> dict | None:
        data = records.read_bench(bench)
        return {**data["config"], "runs": data.get("runs")} if isinstance(data.get("config"), dict) else None
    # every file the bench writes: an interrupted bench has bench.json (written last) only if it finished
    outputs = [bench / layout.BENCH, bench / "bench.csv", bench / "bench.md"]
    return Stage("bench", outputs, inputs,
                 lambda: run_bench(runs, cfg.bench, out=bench, data_dir=cfg.data_dir, progress=progress),
                 wanted, recorded)


def optimized_dir(out: Path, run: Path) -> Path:
    return out / f"{run.name}-optimized"


def _optimize_stage(cfg: PipelineConfig, run: Path, progress: bool) -> Stage:
    from cnndeploy.optimize import optimize_run

    dest = optimized_dir(Path(cfg.out), run)
    wanted = _plain(dataclasses.asdict(cfg.optimize))

    def recorded() -> dict | None:
        try:
            return _plain(records.OptimizeRecord.read(dest).config)
        except records.RecordError:
            return None

    def action() -> None:
        if dest.exists():   # the pipeline's own earlier (stale or unfinished) result
            shutil.rmtree(dest)
        optimize_run(run, cfg.optimize, out=dest, data_dir=cfg.data_dir, progress=progress)
    return Stage(f"{run.name}: optimize (max drop {cfg.optimize.max_drop:g} points)",
                 [dest / layout.OPTIMIZE, dest / layout.BEST], [run / layout.WEIGHTS], action, wanted, recorded)


def run_pipeline(cfg: PipelineConfig, *, progress: bool = True) -> Path:
    """Run every stage that is not complete yet; write pipeline.json and report.md; return the report path."""
    t0 = time.perf_counter()
    out = Path(cfg.out)
    stages, runs = plan(cfg, progress=progress)
    ensure_dir(out, what="--out")
    with ExitStack() as held:  # its folders, for the whole run: the stages take the same locks again
        for folder in (out, *runs, out / layout.BENCH_DIR):
            held.enter_context(lock.writing(folder, command="cnndeploy pipeline"))
        return _run_stages(cfg, out, stages, runs, t0, progress)


def _run_stages(cfg: PipelineConfig, out: Path, stages: list[Stage], runs: list[Path], t0: float,
                progress: bool) -> Path:
    from cnndeploy.bench.report import write_report

    record: list[dict[str, Any]] = []
    total = len(stages) + 1
    for i, stage in enumerate(stages, 1):
        record.append(_run_stage(stage, f"[{i}/{total}]"))
        write_json_atomic(out / layout.PIPELINE, _summary(cfg, runs, record, time.perf_counter() - t0))
    # Built last: its inputs are the artifacts the stages above have just written.
    record.append(_run_stage(_bench_stage(cfg, runs, progress), f"[{total}/{total}]"))
    if cfg.optimize is not None:
        for run in runs:
            if records.PruneRecord.read(run) is None:   # the search prunes the trained model itself
                record.append(_run_stage(_optimize_stage(cfg, run, progress), "[optimize]"))
    summary = _summary(cfg, runs, record, time.perf_counter() - t0)
    write_json_atomic(out / layout.PIPELINE, summary)
    return write_report(out, runs=runs, bench_dir=out / layout.BENCH_DIR, pipeline=summary)


def _run_stage(stage: Stage, counter: str) -> dict[str, Any]:
    why = stage.stale() if stage.outputs else "no outputs"
    if why is None:
        log.info("%s %s: complete already, skipped", counter, stage.name)
        return {"stage": stage.name, "status": "complete already", "seconds": 0.0}
    if stage.outputs:
        log.info("%s %s%s", counter, stage.name, f" ({why})" if why.startswith("made with") else "")
    t = time.perf_counter()
    try:
        stage.action()
    except Skipped as e:
        log.info("%s %s: skipped (%s)", counter, stage.name, e)
        return {"stage": stage.name, "status": f"skipped: {e}", "seconds": 0.0}
    return {"stage": stage.name, "status": "ran", "seconds": round(time.perf_counter() - t, 1)}


def _summary(cfg: PipelineConfig, runs: list[Path], record: list[dict], wall: float) -> dict[str, Any]:
    # "runs": the order in which commands given this folder as RUN_DIR take its run directories
    return {"dataset": cfg.dataset, "models": cfg.models, "runs": [r.name for r in runs],
            "prune": cfg.prune.amount if cfg.prune else 0.0,
            "epochs": cfg.epochs, "data_dir": cfg.data_dir and os.fspath(cfg.data_dir),
            "config": cfg.to_json(), "stages": record, "wall_seconds_this_call": round(wall, 1)}
