"""`cnndeploy train`: from a dataset to a complete run directory, resumable epoch by epoch."""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
import typing
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnndeploy.artifacts import files as layout
from cnndeploy.artifacts import lock, records
from cnndeploy.models import weights
from cnndeploy.data import ImageDataset, load_dataset
from cnndeploy.data.holdout import Holdout
from cnndeploy.data.device import DeviceSplit, ShardedSplit, augment_for
from cnndeploy.devices import pick_device
from cnndeploy.system import cpu_has_bf16
from cnndeploy.errors import CheckpointError, CnnDeployError, TrainingError
from cnndeploy.fileio import write_bytes_atomic, write_json_atomic
from cnndeploy.models import create_model, get_spec
from cnndeploy.train import distributed
from cnndeploy.train.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint
from cnndeploy.train.distributed import Dist
from cnndeploy.train.loop import PRECISIONS, evaluate, train_one_epoch, uses_bf16
from cnndeploy.train.ema import ModelEma
from cnndeploy.train.schedule import SCHEDULES, lr_at

log = logging.getLogger("cnndeploy")


SEED_MAX = 2**64 - 1  # torch.manual_seed's range


def check_seed(seed: object, what: str = "seed") -> None:
    """An integer in [0, 2**64-1]; bools are no seeds (True would silently be 1)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise CnnDeployError(f"{what} {seed!r}: expected an integer in [0, 2**64-1] (torch.manual_seed's range)")


@dataclass
class TrainConfig:
    model: str
    dataset: str
    out: str
    epochs: int | None = None          # None: the model's recipe for this dataset
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    warmup: float | None = None
    schedule: str | None = None        # linear, cosine or onecycle after the warm-up
    ema: float | None = None           # decay of the weights' moving average (the saved model); 0: off
    random_erasing: float | None = None  # probability of erasing a rectangle of each training image
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    data_dir: str | None = None
    download: bool = False
    subset: int | None = None          # train on a fixed random subset of this many images
    holdout: int = 0                   # training images kept out as the validation split (data.holdout)
    holdout_seed: int = 0              # which ones
    widths: dict | None = None         # non-default layer widths (a pruned model)
    init_weights: str | None = None    # start from these weights (safetensors) instead of random
    sync_bn: bool = False              # under torchrun on GPUs: BatchNorm over the whole global batch
    precision: str = "auto"            # training compute: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16
    teacher: str | None = None         # a run directory whose model teaches (knowledge distillation)

    def __post_init__(self) -> None:
        check_seed(self.seed)  # built from Python, not only from the command line (which checks it too)
        check_seed(self.holdout_seed, "holdout seed")
        if type(self.holdout) is not int or self.holdout < 0:
            raise CnnDeployError(f"holdout {self.holdout!r}: expected a non-negative number of training images")

    def resolved(self) -> "TrainConfig":
        """Fill unset hyper-parameters from the model's recipe for this dataset."""
        recipe = get_spec(self.model).recipe(self.dataset)
        fills = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)
                 if getattr(self, f.name) is None}
        return dataclasses.replace(self, **fills)


# Fields added after runs were first recorded, with the value those runs trained with: a checkpoint
# or metrics.json without them is read as today's defaults, never as "from the recipe".
LATER_FIELDS: dict[str, Any] = {"schedule": "linear", "ema": 0.0, "random_erasing": 0.0, "holdout": 0,
                                 "holdout_seed": 0}


def with_later_fields(config: dict[str, Any]) -> dict[str, Any]:
    return {**LATER_FIELDS, **config}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise CnnDeployError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")


def check_recipe_options(cfg: TrainConfig) -> None:
    """The schedule, EMA and erasing values of a resolved config (also one built through the API)."""
    if cfg.schedule not in SCHEDULES:
        raise CnnDeployError(f"schedule {cfg.schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if not (records.fits(cfg.ema, float) and (cfg.ema == 0 or 0 < cfg.ema < 1)):
        raise CnnDeployError(f"ema {cfg.ema!r}: expected 0 (off) or a decay in (0, 1), such as 0.999")
    if not (records.fits(cfg.random_erasing, float) and 0 <= cfg.random_erasing <= 1):
        raise CnnDeployError(f"random_erasing {cfg.random_erasing!r}: expected a probability in [0, 1]")


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only; BN parameters and biases are left alone."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _subset(ds: ImageDataset, n: int | None, seed: int) -> ImageDataset:
    if n and n >= len(ds.train_y):
        log.warning("--subset %d: the training split has only %d images; using all of them", n, len(ds.train_y))
    if not n or n >= len(ds.train_y):
        return ds
    idx = torch.randperm(len(ds.train_y), generator=torch.Generator().manual_seed(seed))[:n].sort()[0]
    return dataclasses.replace(ds, train_x=ds.train_x[idx.numpy()], train_y=ds.train_y[idx.numpy()])


def fitted_batch_size(batch_size: int, train_images: int, world_size: int = 1) -> int:
    """The batch size a run trains with: at most the training split, kept a multiple of the processes.

    A larger one would make a single short batch per epoch anyway (a batch is never padded), so
    the run records what it really used. Too few images for 2 per process are left to the checks.
    """
    if batch_size <= train_images:
        return batch_size
    fitted = train_images - train_images % world_size
    return fitted if fitted >= 2 * world_size else batch_size


def _fit_batch(cfg: TrainConfig, train_images: int, world_size: int) -> TrainConfig:
    fitted = fitted_batch_size(cfg.batch_size, train_images, world_size)
    if fitted != cfg.batch_size:
        log.warning("batch size %d is larger than the %d training images: training with batch %d, one step "
                    "per epoch (a smaller --batch-size takes more steps per epoch)",
                    cfg.batch_size, train_images, fitted)
    return dataclasses.replace(cfg, batch_size=fitted)


def _prepare_out(out: Path, resume: bool) -> bool:
    """Refuse to clobber a finished run or silently restart an unfinished one; True if resuming."""
    has_ckpt = (out / layout.CHECKPOINT).is_file()
    if resume:
        if not has_ckpt:
            raise CnnDeployError(f"--resume: no {layout.CHECKPOINT} in {out}; nothing to resume")
        if (out / layout.METRICS).is_file():
            raise CnnDeployError(f"--resume: {out} holds a finished run (metrics.json); nothing to resume")
        for name in (layout.CHECKPOINT, layout.LOG, layout.WEIGHTS, layout.MODEL_JSON, layout.CURVES):
            for stale in out.glob(f".{name}.*.tmp"):  # half-written by a killed run; never read
                stale.unlink(missing_ok=True)
        return True
    if (out / layout.METRICS).is_file() or (out / layout.WEIGHTS).is_file():
        raise CnnDeployError(f"{out} already holds a trained model; choose another --out "
                             "(nothing was overwritten)")
    if has_ckpt:
        raise CnnDeployError(f"{out} holds an unfinished run; add --resume to continue it, "
                             "or choose another --out")
    return False


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    rng = {"torch": torch.get_rng_state(), "data": gen.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _set_rng_state(rng: dict[str, torch.Tensor], gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    gen.set_state(rng["data"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


def _check_same_run(state: dict, identity: dict, device: torch.device, out: Path) -> None:
    """A resumed run must see the same data, and its RNG streams only exist on one device type."""
    if state.get("data") and state["data"] != identity:
        raise CnnDeployError(f"--resume: the data differs from the run in {out} (saved "
                             f"{state['data']['source']}, {state['data']['train_images']}/"
                             f"{state['data']['test_images']} images; now {identity['source']}, "
                             f"{identity['train_images']}/{identity['test_images']}); pass the same "
                             "--data-dir as the first run")
    if state.get("device_type", device.type) != device.type:
        raise CnnDeployError(f"--resume: the run in {out} was trained on {state['device_type']} and would "
                             f"continue on {device.type}; pass --device {state['device_type']}")


def check_saved_config(saved: dict, where: Path) -> None:
    """A checkpoint's config must have TrainConfig's fields and types: one line naming the field if not."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(saved) - set(fields))
    if unknown:
        raise CheckpointError(f"{where}: malformed checkpoint state (unknown config field "
                              f"{unknown[0]!r}; expected some of {', '.join(fields)})")
    for name, f in fields.items():
        if name not in saved:
            if f.default is dataclasses.MISSING:
                raise CheckpointError(f"{where}: malformed checkpoint state (config field {name!r} is missing)")
            continue
        if not records.fits(saved[name], hints[name]):
            raise CheckpointError(f"{where}: malformed checkpoint state (config field {name!r} must be "
                                  f"{f.type}, got {type(saved[name]).__name__})")


def _resume_config(out: Path, cfg: TrainConfig, explicit: set[str]) -> TrainConfig:
    saved = checkpoint_state(out / layout.CHECKPOINT).get("config")
    if not saved:
        raise CnnDeployError(f"{out / layout.CHECKPOINT} holds no training config; cannot resume")
    saved = with_later_fields(saved)
    check_saved_config(saved, out / layout.CHECKPOINT)
    clash = {k: (saved[k], getattr(cfg, k)) for k in explicit
             if k in saved and k not in ("device", "data_dir", "precision", "out", "dataset")
             and saved[k] != getattr(cfg, k)}
    if clash:
        raise CnnDeployError("--resume continues the saved run, but these options differ from it: "
                             + ", ".join(f"--{k.replace('_', '-')} saved {a!r} vs given {b!r}"
                                         for k, (a, b) in clash.items()))
    # Where the data lives and which device runs may change on resume, but only when typed.
    moved = {k: getattr(cfg, k) for k in ("device", "data_dir", "precision") if k in explicit}
    return dataclasses.replace(TrainConfig(**saved), out=cfg.out, **moved)


def _build_model(cfg: TrainConfig, ds: ImageDataset, device: torch.device, *, from_init: bool) -> nn.Module:
    """The seeded model (with any pruned widths and initial weights), laid out for `device`."""
    torch.manual_seed(cfg.seed)
    try:
        model = create_model(cfg.model, ds.num_classes, ds.channels, ds.height, ds.width,
                             **(cfg.widths or {}))
    except ValueError as e:
        raise CnnDeployError(f"{cfg.model} cannot take the images of {ds.path}: {e}") from None
    if cfg.init_weights and from_init:
        weights.load_state_dict_checked(model, weights.load_tensors(cfg.init_weights)[0], cfg.init_weights)
    model = model.to(device)
    if _channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return model


def _channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """NHWC is the layout cuDNN and oneDNN's bf16 convolution kernels are fastest in."""
    return device.type == "cuda" or uses_bf16(device, cfg.precision)


def _load_teacher(cfg: TrainConfig, ds: ImageDataset, device: torch.device) -> nn.Module | None:
    """The frozen teacher of a distilled run, checked to see the same images and classes."""
    if not cfg.teacher:
        return None
    teacher, card = weights.load_run(cfg.teacher)
    seen = (card.channels, card.height, card.width, list(card.classes))
    if seen != (ds.channels, ds.height, ds.width, list(ds.classes)):
        raise CnnDeployError(f"teacher {cfg.teacher} was trained on {seen[0]}x{seen[1]}x{seen[2]} images of "
                             f"classes {seen[3]}; this run has {ds.channels}x{ds.height}x{ds.width} "
                             f"images of classes {ds.classes}")
    teacher = teacher.to(device).eval().requires_grad_(False)
    return teacher.to(memory_format=torch.channels_last) if _channels_last(cfg, device) else teacher


def _check_finite_weights(model: nn.Module, epoch: int) -> None:
    """A NaN/Inf gradient in an epoch's last step leaves the loss finite but the weights not."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise TrainingError(f"weights became NaN or infinite during epoch {epoch} ({', '.join(bad[:3])}"
                            f"{', ...' if len(bad) > 3 else ''}): training stopped and the last good "
                            "checkpoint was kept; try a lower --lr")


def train(cfg: TrainConfig, *, resume: bool = False, explicit: set[str] = frozenset(),
          progress: bool = True) -> records.TrainMetrics:
    """Train `cfg.model` on `cfg.dataset` into the run directory `cfg.out`; returns metrics.

    Under torchrun this process is one rank of a data-parallel run (train/distributed.py).
    """
    with distributed.session() as dist:
        return _train(cfg, dist, resume=resume, explicit=explicit, progress=progress and dist.is_main)


def _resolve(out: Path, cfg: TrainConfig, resume: bool, explicit: set[str],
             held: ExitStack) -> tuple[dict, bool]:
    """The config to run (the saved one when resuming), as JSON so rank 0 can send it to the others.

    Rank 0 takes the run directory's write lock first (held until `held` closes): two runs into one
    --out would both pass _prepare_out's checks before either had written anything."""
    if out.exists() and not out.is_dir():
        raise CnnDeployError(f"--out {out} is a file; expected a run directory")
    held.enter_context(lock.writing(out, command="cnndeploy train"))
    resume = _prepare_out(out, resume)
    cfg = _resume_config(out, cfg, explicit) if resume else cfg.resolved()
    return dataclasses.asdict(cfg), resume


def _splits(ds: ImageDataset, device: torch.device, dist: Dist,
            channels_last: bool) -> tuple[DeviceSplit | ShardedSplit, DeviceSplit]:
    """Training and test splits; in a distributed run each rank's share of them."""
    args = {"mean": ds.mean, "std": ds.std, "device": device, "channels_last": channels_last}
    if not dist.active:
        return DeviceSplit(ds.train_x, ds.train_y, **args), DeviceSplit(ds.test_x, ds.test_y, **args)
    mine = dist.shard(len(ds.test_y))
    return (ShardedSplit(ds.train_x, ds.train_y, rank=dist.rank, world_size=dist.world_size, **args),
            DeviceSplit(ds.test_x[mine], ds.test_y[mine], **args))


def _load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     dist: Dist, ema: nn.Module | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Rank 0 reads the checkpoint; the other ranks load the very bytes it read (no shared disk needed)."""
    if dist.world_size == 1:
        return load_checkpoint(path, model=model, optimizer=optimizer, ema=ema)
    data = dist.bytes_from_main(path.read_bytes)
    if dist.is_main:
        return load_checkpoint(path, model=model, optimizer=optimizer, ema=ema)
    with tempfile.TemporaryDirectory(prefix="cnndeploy-ckpt-") as tmp:
        copy = Path(tmp) / path.name
        copy.write_bytes(data)
        return load_checkpoint(copy, model=model, optimizer=optimizer, ema=ema)


def _train(cfg: TrainConfig, dist: Dist, *, resume: bool, explicit: set[str],
           progress: bool) -> records.TrainMetrics:
    with ExitStack() as held:
        return _train_locked(cfg, dist, resume=resume, explicit=explicit, progress=progress, held=held)


def _train_locked(cfg: TrainConfig, dist: Dist, *, resume: bool, explicit: set[str], progress: bool,
                  held: ExitStack) -> records.TrainMetrics:
    out = Path(cfg.out)
    saved, resuming = dist.from_main(lambda: _resolve(out, cfg, resume, explicit, held))
    cfg = TrainConfig(**saved)
    check_precision(cfg.precision)  # also a resumed or API-built config
    check_recipe_options(cfg)
    device = dist.local_device(pick_device(cfg.device))
    t_start = time.perf_counter()
    # the validation split goes first, so --subset never draws from it
    ds = _subset(Holdout(cfg.holdout, cfg.holdout_seed).without(
        load_dataset(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download)), cfg.subset, cfg.seed)
    if cfg.batch_size < 2:
        raise CnnDeployError(f"--batch-size {cfg.batch_size}: expected at least 2 (BatchNorm needs it)")
    if len(ds.train_y) < 2:
        raise CnnDeployError(f"{ds.path}: {len(ds.train_y)} training image(s); expected at least 2")
    cfg = _fit_batch(cfg, len(ds.train_y), dist.world_size)  # before anything records the config
    distributed.check_layout(dist, batch_size=cfg.batch_size, train_images=len(ds.train_y),
                             test_images=len(ds.test_y))
    log.info("data: %s from %s (%d train / %d test images, %.1fs)", ds.source, ds.path,
             len(ds.train_y), len(ds.test_y), time.perf_counter() - t_start)
    if dist.active:
        log.info("data-parallel: %d processes, global batch %d (%d per process), %s", dist.world_size,
                 cfg.batch_size, cfg.batch_size // dist.world_size, device)

    model = _build_model(cfg, ds, device, from_init=not resuming)
    model = distributed.sync_batchnorm(model, wanted=cfg.sync_bn, dist=dist, device=device)
    teacher = _load_teacher(cfg, ds, device)
    cuda = device.type == "cuda"
    train_split, test_split = _splits(ds, device, dist, _channels_last(cfg, device))
    if uses_bf16(device, cfg.precision) and device.type == "cpu" and not cpu_has_bf16():
        log.warning("--precision bf16 on a CPU without AVX512-BF16/AMX: emulated, likely slower than fp32")
    optimizer = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=0.9,
                                nesterov=True)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    steps_per_epoch = train_split.num_batches(cfg.batch_size, drop_last=True)
    schedule = dict(total_steps=cfg.epochs * steps_per_epoch, peak=cfg.lr, warmup=cfg.warmup,
                    schedule=cfg.schedule)
    augment = dataclasses.replace(augment_for(ds.name), erase=cfg.random_erasing)
    # made from the seeded (or initial) weights; a resumed run then loads the saved average
    ema = ModelEma(model, cfg.ema) if cfg.ema else None

    identity = {"source": ds.source, "train_images": len(ds.train_y), "test_images": len(ds.test_y),
                "classes": ds.classes}
    state: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "seconds_in_epochs": 0.0}
    if resuming:
        rng, state = _load_checkpoint(out / layout.CHECKPOINT, model, optimizer, dist,
                                      ema.module if ema else None)
        _check_same_run(state, identity, device, out)
        _set_rng_state(rng, gen, device)
        log.info("resuming %s after epoch %d of %d", out, state["epoch"], cfg.epochs)
    step_model = distributed.data_parallel(model, dist, device)
    step_model = torch.compile(step_model) if cfg.compile else step_model
    # Evaluation runs on the plain module: DDP's forward is a collective, and the test shards
    # of the ranks may differ in size by one image.
    eval_model = model if dist.active else step_model
    dist.from_main(lambda: _make_dir(out))

    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        if dist.active:
            distributed.seed_rank(cfg.seed, epoch, dist.rank)
        stats = train_one_epoch(step_model, train_split, optimizer,
                                lr_at=lambda s: lr_at(s, **schedule), step=state["step"], epoch=epoch,
                                batch_size=cfg.batch_size, augment=augment,
                                generator=gen, loss_fn=loss_fn, precision=cfg.precision, teacher=teacher,
                                ema=ema, progress=progress)
        stats.update(dist.mean({k: stats[k] for k in ("train_loss", "train_accuracy")}))
        t_train = time.perf_counter() - t0
        _check_finite_weights(model, epoch)  # before anything of this epoch is written
        dist.sync_buffers(model)
        # the whole test set (fp32, as exported), shared out among the ranks
        test = distributed.evaluate_sharded(evaluate, eval_model, test_split, dist)
        if ema is not None:  # the average is the model saved, so its accuracy is the one logged
            dist.sync_buffers(ema.module)
            raw, test = test, distributed.evaluate_sharded(evaluate, ema.module, test_split, dist)
        seconds = time.perf_counter() - t0
        row = _epoch_row(epoch, stats, test, seconds=seconds, train_seconds=t_train, host_timings=not cuda)
        if ema is not None:
            row.update(raw_test_loss=raw["loss"], raw_test_accuracy=raw["accuracy"])
        state.update(epoch=epoch, step=stats["steps"], history=state["history"] + [row], data=identity,
                     device_type=device.type, world_size=dist.world_size,
                     seconds_in_epochs=state["seconds_in_epochs"] + seconds, config=dataclasses.asdict(cfg))
        dist.from_main(lambda: _save_epoch(out, model, optimizer, _rng_state(gen, device), state, ema))
        log.info("epoch %d/%d  lr %.4f  train loss %.4f acc %.4f  test loss %.4f acc %.4f  %.1fs",
                 epoch, cfg.epochs, row["lr"], row["train_loss"], row["train_accuracy"],
                 row["test_loss"], row["test_accuracy"], seconds)
    wall = time.perf_counter() - t_start
    saved_model = ema.module if ema is not None else model
    finished = dist.from_main(lambda: _finish(out, cfg, saved_model, ds, state, wall=wall, device=device,
                                              world_size=dist.world_size).to_json())
    return records.TrainMetrics(**finished)  # every rank returns what rank 0 wrote


def _epoch_row(epoch: int, stats: dict[str, Any], test: dict[str, Any], *, seconds: float,
               train_seconds: float, host_timings: bool) -> dict[str, Any]:
    """One line of log.jsonl."""
    row = {"epoch": epoch, "lr": stats["lr"], "train_loss": stats["train_loss"],
           "train_accuracy": stats["train_accuracy"], "test_loss": test["loss"],
           "test_accuracy": test["accuracy"], "seconds": round(seconds, 3),
           "train_seconds": round(train_seconds, 3), "eval_seconds": round(seconds - train_seconds, 3)}
    if host_timings:  # host timings mean something only when every op is synchronous
        row.update(data_seconds=round(stats["data_seconds"], 3),
                   compute_seconds=round(stats["compute_seconds"], 3))
    return row


def _make_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CnnDeployError(f"cannot create the run directory {out} ({e.strerror})") from None


def _save_epoch(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                rng: dict[str, torch.Tensor], state: dict[str, Any], ema: ModelEma | None) -> None:
    """The checkpoint, then the log: what --resume and a reader of log.jsonl need after each epoch."""
    save_checkpoint(out / layout.CHECKPOINT, model=model, optimizer=optimizer, rng=rng, state=state,
                    ema=ema.module if ema is not None else None)
    write_bytes_atomic(out / layout.LOG, "".join(json.dumps(r) + "\n" for r in state["history"]).encode())


def _finish(out: Path, cfg: TrainConfig, model: nn.Module, ds: ImageDataset, state: dict,
            *, wall: float, device: torch.device, world_size: int = 1) -> records.TrainMetrics:
    from cnndeploy.train.curves import curves_title, plot_curves

    history = state["history"]
    best = max(history, key=lambda h: h["test_accuracy"])
    card = weights.card_for(cfg.model, model, ds.metadata(), dataset_path=str(ds.path))
    weights.save_weights(out / layout.WEIGHTS, model)
    write_json_atomic(out / layout.MODEL_JSON, card.to_json())
    # prune's fine-tune is an ordinary run whose config carries the pruned widths (and any teacher)
    plot_curves(history, out / layout.CURVES, curves_title(cfg.model, ds.name, ds.source,
                                                           pruned=bool(cfg.widths), teacher=cfg.teacher))
    metrics = records.TrainMetrics(
        test_accuracy=history[-1]["test_accuracy"], test_loss=history[-1]["test_loss"],
        best_test_accuracy=best["test_accuracy"], best_epoch=best["epoch"], epochs=cfg.epochs,
        train_images=len(ds.train_y), test_images=len(ds.test_y),
        seconds_in_epochs=round(state["seconds_in_epochs"], 3), wall_seconds=round(wall, 3),
        train_images_per_second=round(len(ds.train_y) * len(history) / sum(h["train_seconds"] for h in history), 1),
        params=sum(p.numel() for p in model.parameters()),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__, dataset_source=ds.source, world_size=world_size, config=dataclasses.asdict(cfg))
    metrics.write(out)  # written last: its presence marks a complete run
    return metrics
