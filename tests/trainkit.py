"""Helpers shared by the training tests."""

from __future__ import annotations

from cnndeploy.train import fit


def interrupt_after_epochs(monkeypatch, n: int) -> None:
    """Make `train` stop (as Ctrl-C would) right after its n-th checkpoint is saved."""
    real, calls = fit.save_checkpoint, {"n": 0}

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
    monkeypatch.setattr(fit, "save_checkpoint", save_then_stop)
