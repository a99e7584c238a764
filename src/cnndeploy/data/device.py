"""A whole split as one uint8 tensor on the training device, with augmentation as tensor ops.

As in airbench: no DataLoader, no per-sample Python. Each batch is an index into the
resident tensor, cropped and flipped for the whole batch at once, then normalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    pad: int = 0          # random crop of the original size from the image padded by `pad` pixels
    flip: bool = False    # random horizontal flip (CIFAR-10 only: digits are not symmetric)


def augment_for(dataset: str) -> Augment:
    """Default augmentation: crop with padding for everything, flips for CIFAR-10 only.

    A user's own images may be text, arrows or digits, where a mirror image is another class.
    """
    if dataset == "mnist":
        return Augment(pad=2, flip=False)
    return Augment(pad=4, flip=dataset == "cifar10")


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]          # [n, h, 1]
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]          # [n, 1, w]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)             # gather -> [n, c, h, w]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


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
            yield self.normalize(x), y

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last and n >= batch_size else -(-n // batch_size)
