"""Training loop, per-epoch evaluation, checkpoints, data-parallel runs, and prune + fine-tune."""

from cnndeploy.train.loop import evaluate, train_one_epoch

__all__ = ["evaluate", "train_one_epoch"]
