"""Shared fixtures: the real datasets in ../shared/datasets, a private cache, the shipped subset."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "mnist-mini"   # the MNIST subset that ships with the repo


def pytest_configure(config: pytest.Config) -> None:
    # One decode cache per test session: tests never read or write the user's cache.
    os.environ["CNNDEPLOY_CACHE"] = tempfile.mkdtemp(prefix="cnndeploy-test-cache-")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ.get("CNNDEPLOY_CACHE", ""), ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder with the real MNIST IDX files and the CIFAR-10 JPEG archive."""
    root = Path(os.environ.get("CNNDEPLOY_DATA") or REPO.parent / "shared" / "datasets")
    if not (root / "mnist").is_dir():
        pytest.skip(f"real datasets not found at {root} (set CNNDEPLOY_DATA)")
    return root


@pytest.fixture(scope="session")
def mini_mnist() -> Path:
    """Data dir holding mnist/ with the shipped subset (10k train, 2k test)."""
    assert (SHIPPED / "mnist" / "train-images-idx3-ubyte.gz").is_file(), "shipped MNIST subset missing"
    return SHIPPED


HELD_OUT = 1000   # training images the held-out LeNet never saw (its validation split)


@pytest.fixture(scope="session")
def held_out_lenet(mini_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet-5, 2 epochs on the shipped subset with HELD_OUT training images held out; shared by the
    optimize and QAT tests, which write only beside it (its parent folder), never into it."""
    import torch

    from cnndeploy.train.fit import TrainConfig, train

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("held-out") / "lenet"
    train(TrainConfig(model="lenet5", dataset="mnist", out=str(run), data_dir=str(mini_mnist), epochs=2,
                      device="cpu", holdout=HELD_OUT), progress=False)
    return run
