"""Training loop, evaluation, checkpoints (and, with the compression issue, prune + fine-tune)."""

from cnndeploy.train.loop import evaluate, train_one_epoch

__all__ = ["evaluate", "train_one_epoch"]
