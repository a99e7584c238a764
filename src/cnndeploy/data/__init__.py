"""Dataset readers (MNIST IDX, CIFAR-10 pickles/binary/JPEG, image folders), cache, device batches."""

from cnndeploy.data.load import dataset_for, load_dataset
from cnndeploy.data.types import ImageDataset

__all__ = ["ImageDataset", "dataset_for", "load_dataset"]
