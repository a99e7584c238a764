"""Errors the CLI reports as one line (no traceback) and a non-zero exit."""


class CnnDeployError(Exception):
    """An expected failure caused by the user's input or environment.

    The message must say what was wrong and what was expected.
    """


class DatasetError(CnnDeployError):
    """A dataset could not be found, read or validated."""


class CheckpointError(CnnDeployError):
    """A run directory, checkpoint or weights file is missing, corrupt or mismatched."""


class TrainingError(CnnDeployError):
    """Training cannot go on (for example a non-finite loss)."""
