"""The embeddable classifier's documented import path; it lives in `cnndeploy.runtime`."""

from cnndeploy.runtime.classifier import *  # noqa: F403
from cnndeploy.runtime.classifier import (Classifier, ImageInputError, ModelFileError,  # noqa: F401
                                          check_external_data)
