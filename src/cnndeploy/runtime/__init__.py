"""Running exported models: the torch-free ONNX `Classifier` that apps embed, one runner per
backend, and the one accuracy function every stage measures with.

Importing this package (and `cnndeploy.runtime.classifier`) needs numpy, pillow and
onnxruntime only; torch and TensorRT are imported by the runners that use them, when they run.
"""

from cnndeploy.runtime.classifier import Classifier, ImageInputError, ModelFileError

__all__ = ["Classifier", "ImageInputError", "ModelFileError"]
