"""cnndeploy: train, compress, export and benchmark small image classifiers."""

__version__ = "0.1.0"
