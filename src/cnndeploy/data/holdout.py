"""The validation split: a fixed, seeded set of training images that training never sees.

One owner for which images are held out, so that `train --holdout`, the fine-tunes of
`prune`, calibration and `optimize` all agree on them. Decisions (pruning amount, INT8
fallback, which file ships) are made on these images; the test split is only reported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from cnndeploy.data.types import ImageDataset
from cnndeploy.errors import CnnDeployError


@dataclass(frozen=True)
class Holdout:
    size: int        # images taken out of the training split (0: none)
    seed: int = 0    # which ones: a seeded permutation of the training split's indices

    def indices(self, n_train: int) -> np.ndarray:
        """Sorted indices into the training split of the held-out images."""
        if type(self.size) is not int or self.size < 0:
            raise CnnDeployError(f"holdout {self.size!r}: expected a non-negative number of training images")
        if self.size and self.size > n_train // 2:
            raise CnnDeployError(f"holdout {self.size}: the training split has {n_train} images; "
                                 f"expected at most half of them ({n_train // 2}) held out")
        perm = np.random.default_rng(self.seed).permutation(n_train)
        return np.sort(perm[:self.size])

    def split(self, ds: ImageDataset) -> tuple[ImageDataset, np.ndarray, np.ndarray]:
        """(the dataset without the held-out images, their pixels, their labels)."""
        idx = self.indices(len(ds.train_y))
        if not self.size:
            return ds, ds.train_x[:0], ds.train_y[:0]
        keep = np.ones(len(ds.train_y), bool)
        keep[idx] = False
        rest = dataclasses.replace(ds, train_x=ds.train_x[keep], train_y=ds.train_y[keep])
        return rest, ds.train_x[idx], ds.train_y[idx]

    def without(self, ds: ImageDataset) -> ImageDataset:
        return self.split(ds)[0]
