"""A whole split as one uint8 tensor on the training device, with augmentation as tensor ops.

As in airbench: no DataLoader, no per-sample Python. Each batch is an index into the
resident tensor, cropped and flipped for the whole batch at once, normalised, then (optionally)
randomly erased.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    pad: int = 0          # random crop of the original size from the image padded by `pad` pixels
    flip: bool = False    # random horizontal flip (CIFAR-10 only: digits are not symmetric)
    erase: float = 0.0    # random erasing: probability that an image gets one rectangle set to the mean


def augment_for(dataset: str) -> Augment:
    """Default augmentation: crop with padding for everything, flips for CIFAR-10 only.

    A user's own images may be text, arrows or digits, where a mirror image is another class.
    """
    if dataset == "mnist":
        return Augment(pad=2, flip=False)
    return Augment(pad=4, flip=dataset == "cifar10")


def crop_offsets(n: int, pad: int, generator: torch.Generator, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop offsets (dy, dx) for `n` images, each of shape [n, 1]."""
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=device)
    return dy, dx


def crop_at(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Crop each image of `x`, padded by `pad` pixels, at its own offset (dy, dx)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]          # [n, h, 1]
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]          # [n, 1, w]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)             # gather -> [n, c, h, w]


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    return crop_at(x, pad, *crop_offsets(x.shape[0], pad, generator, x.device))


def flip_mask(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < 0.5


def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return flip_where(x, flip_mask(x.shape[0], generator, x.device))


# timm's RandomErasing defaults: a rectangle of 2%-33% of the image, aspect ratio 0.3-3.3.
ERASE_AREA = (0.02, 1 / 3)
ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))


def erase_mask(n: int, h: int, w: int, p: float, generator: torch.Generator, device: torch.device
               ) -> torch.Tensor:
    """For each of `n` images, with probability `p`, one random rectangle: a bool mask [n, 1, h, w].

    Drawn for the whole batch at once. Where timm retries a rectangle that does not fit, this
    clips its sides to the image, which keeps it one draw per image.
    """
    u = torch.rand(n, 5, generator=generator, device=device)
    area = h * w * (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * u[:, 0])
    aspect = torch.exp(ERASE_LOG_ASPECT[0] + (ERASE_LOG_ASPECT[1] - ERASE_LOG_ASPECT[0]) * u[:, 1])
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    top = ((h - eh + 1) * u[:, 2]).floor().clamp(max=h - eh)
    left = ((w - ew + 1) * u[:, 3]).floor().clamp(max=w - ew)
    rows = torch.arange(h, device=device)[None, :]
    cols = torch.arange(w, device=device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])      # [n, h]
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])    # [n, w]
    chosen = (u[:, 4] < p)[:, None, None]
    return (in_rows[:, :, None] & in_cols[:, None, :] & chosen)[:, None]


def erase_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Set the masked pixels of a normalised batch to 0, the dataset's mean colour (timm's 'const').

    In place (the batch is a fresh tensor), which keeps its memory format (channels_last).
    """
    return x.masked_fill_(mask, 0.0)


class DeviceSplit:
    """Images (uint8) and labels of one split, resident on `device`."""

    def __init__(self, x: np.ndarray, y: np.ndarray, *, mean, std, device: torch.device,
                 channels_last: bool = False) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        self.y = torch.from_numpy(np.ascontiguousarray(y)).to(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.y)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> (x/255 - mean)/std, the preprocessing every exported model assumes."""
        return ((x.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None,
                augment: Augment = Augment(), drop_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled and augmented batches when a generator is given, else in order."""
        n = len(self)
        order = (torch.randperm(n, generator=generator, device=self.x.device)
                 if generator is not None else None)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            if order is None:
                x, y = self.x[start:start + batch_size], self.y[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                x, y = self.x[idx], self.y[idx]
            if generator is not None and augment.pad:
                x = random_crop(x, augment.pad, generator)
            if generator is not None and augment.flip:
                x = random_flip(x, generator)
            x = self.normalize(x)
            if generator is not None and augment.erase:
                x = erase_where(x, erase_mask(len(x), x.shape[2], x.shape[3], augment.erase, generator,
                                              x.device))
            yield x, y

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last and n >= batch_size else -(-n // batch_size)


class ShardedSplit:
    """One rank's share of a training split in data-parallel training (`W` ranks, global batch `B`).

    Every rank draws the same global shuffle and the same crop/flip numbers for the whole
    global batch as `DeviceSplit.batches` does in one process (same generator, same seed, same
    order of draws), then keeps its slice `[rank*B/W, (rank+1)*B/W)` of each global batch. So
    the W ranks together see exactly the images, crops and flips of a single-process run with
    batch B, and the data generator ends each epoch in the same state, which keeps checkpoints
    interchangeable between world sizes.

    The images stay in host memory; at the start of each epoch the rank copies only its shard
    of that epoch (1/W of the split) to its device.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, mean, std, device: torch.device,
                 channels_last: bool = False, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.x, self.y = x, y
        self.device = device
        self.rank, self.world_size = rank, world_size
        self._split_args = {"mean": mean, "std": std, "device": device, "channels_last": channels_last}

    def __len__(self) -> int:
        return len(self.y)

    def num_batches(self, batch_size: int, drop_last: bool = True) -> int:
        """Global batches per epoch (optimizer steps); the last partial batch is always dropped."""
        return len(self) // batch_size

    def local_batch(self, batch_size: int) -> int:
        if batch_size % self.world_size or len(self) < batch_size:
            raise ValueError(f"a global batch of {batch_size} cannot be split evenly across "
                             f"{self.world_size} ranks over {len(self)} images")
        return batch_size // self.world_size

    def batches(self, batch_size: int, *, generator: torch.Generator, augment: Augment = Augment(),
                drop_last: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's slice of every global batch of `batch_size`, shuffled and augmented."""
        per = self.local_batch(batch_size)
        lo, hi = self.rank * per, (self.rank + 1) * per
        steps = self.num_batches(batch_size)
        order = torch.randperm(len(self), generator=generator, device=self.device)
        mine = order[:steps * batch_size].view(steps, batch_size)[:, lo:hi].reshape(-1).cpu().numpy()
        shard = DeviceSplit(self.x[mine], self.y[mine], **self._split_args)  # this epoch's shard
        for step in range(steps):
            x, y = shard.x[step * per:(step + 1) * per], shard.y[step * per:(step + 1) * per]
            if augment.pad:  # draw for the whole global batch, as one process would, keep our slice
                dy, dx = crop_offsets(batch_size, augment.pad, generator, self.device)
                x = crop_at(x, augment.pad, dy[lo:hi], dx[lo:hi])
            if augment.flip:
                x = flip_where(x, flip_mask(batch_size, generator, self.device)[lo:hi])
            x = shard.normalize(x)
            if augment.erase:
                x = erase_where(x, erase_mask(batch_size, x.shape[2], x.shape[3], augment.erase, generator,
                                              self.device)[lo:hi])
            yield x, y
