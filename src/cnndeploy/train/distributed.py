"""Data-parallel training under torchrun: the process group, and the few collectives train() needs.

torchrun is the launcher; we never start processes ourselves. It sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT for each worker, and `session()` reads them. Without
them everything here is a no-op for one process, so `train()` has a single code path.

Design (README, "Distributed training"): `--batch-size` is the global batch. Each of the W ranks
takes its B/W slice of every global batch (`ShardedSplit`), DDP averages the gradients, so a step
is the step one process would take on the whole batch: steps per epoch and the learning-rate
schedule do not depend on W. Rank 0 alone touches the run directory; the other ranks get what it
read or decided (the resolved config, the checkpoint bytes, the final metrics) by broadcast.
No pickle crosses the wire either: bytes and JSON only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
from torch import nn

from cnndeploy.errors import CnnDeployError

log = logging.getLogger("cnndeploy")
T = TypeVar("T")

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class PeerError(CnnDeployError):
    """Rank 0 failed (and said why); a non-main rank stops quietly with it."""


def launched_by_torchrun(env: dict[str, str] | os._Environ = os.environ) -> bool:
    return all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def env_rank() -> int:
    """This process's global rank (0 outside torchrun), readable before any process group exists."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the job. `active` only when a process group is running."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_device(self, device: torch.device) -> torch.device:
        """The device of this rank: GPU number LOCAL_RANK of its node when training on CUDA."""
        if device.type != "cuda" or not self.active:
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise CnnDeployError(f"LOCAL_RANK {self.local_rank} but this node has {torch.cuda.device_count()} "
                                 "GPU(s): --nproc-per-node must not exceed the GPUs of a node")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    # --- rank 0 decides, everyone learns -------------------------------------------------------
    def bytes_from_main(self, fn: Callable[[], bytes]) -> bytes:
        """Run `fn` on rank 0 only; every rank gets its bytes, or raises its error."""
        if not self.active or self.world_size == 1:
            return fn()
        if self.is_main:
            try:
                data = fn()
            except BaseException as e:  # the peers wait on our broadcast: tell them before raising
                why = str(e) if isinstance(e, CnnDeployError) else f"{type(e).__name__}: {e}"
                _broadcast_bytes(why.encode(), failed=True)
                raise
            return _broadcast_bytes(data, failed=False)[0]
        data, failed = _broadcast_bytes(None, failed=False)
        if failed:
            raise PeerError(f"rank 0 failed: {data.decode(errors='replace')}")
        return data

    def from_main(self, fn: Callable[[], T]) -> T:
        """Like bytes_from_main for a JSON-able result (a config, metrics, None)."""
        return json.loads(self.bytes_from_main(lambda: json.dumps(fn()).encode()))

    # --- reductions ----------------------------------------------------------------------------
    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks (float64 on the CPU, so gloo carries it)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Mean over the ranks; exact for per-rank averages over equally many samples."""
        sums = self.sum(list(values.values()))
        return {k: s / self.world_size for k, s in zip(values, sums)}

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank.

        Without SyncBatchNorm each rank's running statistics come from its own slice of the
        batches; rank 0's are the ones saved, so every rank evaluates with those.
        """
        if self.active and self.world_size > 1:
            for buf in model.buffers():
                torch.distributed.broadcast(buf, src=0)

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n items (sizes differ by at most one)."""
        return slice(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)


def _broadcast_bytes(data: bytes | None, *, failed: bool) -> tuple[bytes, bool]:
    """Rank 0's bytes (and whether they are an error message) on every rank, over the CPU group."""
    head = torch.tensor([len(data) if data is not None else 0, int(failed)], dtype=torch.int64)
    torch.distributed.broadcast(head, src=0)
    if data is not None:
        buf = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    else:
        buf = torch.empty(int(head[0]), dtype=torch.uint8)
    if len(buf):
        torch.distributed.broadcast(buf, src=0)
    return buf.numpy().tobytes(), bool(head[1])


def _backend() -> str:
    """gloo for CPU tensors always; NCCL for CUDA tensors when torch has it.

    One group with both lets the small set-up messages (JSON, checkpoint bytes) go over gloo
    on the CPU while DDP's gradients go over NCCL on the GPUs.
    """
    if torch.cuda.is_available() and torch.distributed.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def _from_env() -> Dist:
    missing = [k for k in TORCHRUN_VARS if k not in os.environ]
    if missing:
        raise CnnDeployError(f"RANK/WORLD_SIZE/LOCAL_RANK are set but {', '.join(missing)} not: launch "
                             "data-parallel training with torchrun (see README, Distributed training)")
    try:
        rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise CnnDeployError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None
    if not (0 <= rank < world and local >= 0):
        raise CnnDeployError(f"RANK {rank} outside WORLD_SIZE {world}")
    return Dist(rank=rank, world_size=world, local_rank=local, active=True)


@contextlib.contextmanager
def session() -> Iterator[Dist]:
    """The process group of a torchrun worker for the duration of the block; one process otherwise.

    A group someone else started (a caller that set up torch.distributed) is used and left open.
    """
    if not launched_by_torchrun():
        yield Dist()
        return
    if not torch.distributed.is_available():  # else every worker would train alone into one --out
        raise CnnDeployError(f"launched by torchrun, but this torch ({torch.__version__}) was built without "
                             "torch.distributed; install a build with it, or run cnndeploy train directly")
    dist = _from_env()
    owned = not torch.distributed.is_initialized()
    if owned:
        torch.distributed.init_process_group(backend=_backend())  # env:// rendezvous from torchrun
    if not dist.is_main:  # one copy of every message and no progress bar: rank 0 speaks
        log.setLevel(logging.ERROR)
    try:
        yield dist
    finally:
        if owned:
            torch.distributed.destroy_process_group()


def seed_rank(seed: int, epoch: int, rank: int) -> None:
    """Seed torch's global RNG (dropout) per rank and epoch.

    Ranks must not draw identical dropout masks for their different images, and a resumed run
    must draw the same masks again without storing W RNG states: both follow from (seed, epoch, rank).
    """
    # modulo 2**64, torch's seed range: any --seed it accepts stays valid here (smaller ones are unchanged)
    torch.manual_seed(((seed * 1_000_003 + epoch) * 65_537 + rank) % 2**64)


def data_parallel(model: nn.Module, dist: Dist, device: torch.device) -> nn.Module:
    """The module to step: DDP around `model` in a distributed run, `model` itself otherwise."""
    if not dist.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # A conv weight with one input channel (LeNet on MNIST) has a gradient whose strides differ
    # from the parameter's only along that size-1 axis: the same memory layout, so DDP's
    # "grad strides do not match bucket view strides" warning is noise there. On CUDA the model
    # is channels_last before it is wrapped, as DDP asks, so its gradients match the buckets.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None)


def sync_batchnorm(model: nn.Module, *, wanted: bool, dist: Dist, device: torch.device) -> nn.Module:
    """BatchNorm layers that normalise with the statistics of the whole global batch (--sync-bn)."""
    if not wanted:
        return model
    if not dist.active or dist.world_size == 1:
        log.warning("--sync-bn: a single process already sees the whole batch; ignored")
        return model
    if device.type != "cuda":
        raise CnnDeployError("--sync-bn needs CUDA GPUs: torch's SyncBatchNorm has no CPU implementation "
                             "(under gloo each rank's BatchNorm uses its own B/W images; drop --sync-bn)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def check_layout(dist: Dist, *, batch_size: int, train_images: int, test_images: int) -> None:
    """The global batch must split evenly, and every rank needs a training slice and test images."""
    if not dist.active:
        return
    w = dist.world_size
    if batch_size % w:
        raise CnnDeployError(f"--batch-size {batch_size} is the global batch and must be a multiple of the "
                             f"{w} processes (each takes batch/{w}); try {batch_size - batch_size % w or w}")
    if batch_size // w < 2:
        raise CnnDeployError(f"--batch-size {batch_size} over {w} processes leaves {batch_size // w} image per "
                             f"process; expected at least 2 (BatchNorm needs it)")
    if train_images < batch_size:
        raise CnnDeployError(f"{train_images} training images are fewer than one global batch of {batch_size}")
    if test_images < w:
        raise CnnDeployError(f"{test_images} test images cannot be shared by {w} processes")


def evaluate_sharded(evaluate: Callable[..., dict[str, Any]], model: nn.Module, split, dist: Dist,
                     **kwargs: Any) -> dict[str, Any]:
    """`evaluate` on this rank's test shard, summed over the ranks into whole-test-set numbers."""
    r = evaluate(model, split, **kwargs)
    if not dist.active:
        return r
    loss_sum, correct, n = dist.sum([r["loss"] * r["n"], round(r["accuracy"] * r["n"]), r["n"]])
    return {**r, "loss": loss_sum / n, "accuracy": int(correct) / int(n), "n": int(n)}
