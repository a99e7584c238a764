"""Softmax top-k: what a classifier answers, for one image or a batch."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, classes] logits, in float64 so tiny probabilities do not vanish."""
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """(label, probability) pairs, most probable first, for each row of [N, classes] logits."""
    probs = softmax(np.atleast_2d(logits))
    k = max(1, min(k, len(classes)))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(p[j])) for j in row] for p, row in zip(probs, order)]
