"""The run-directory contract: the table of files, the ModelCard, variants with lineage, JSON records.

Pure Python and JSON (no torch, no onnxruntime): the runtime, the demo and every stage read it.
"""

from cnndeploy.artifacts.card import ModelCard, ModelCardError
from cnndeploy.artifacts.files import FILES, FileSpec, engine_name, spec, spec_of
from cnndeploy.artifacts.variants import Variant, discover

__all__ = ["FILES", "FileSpec", "ModelCard", "ModelCardError", "Variant", "discover", "engine_name",
           "spec", "spec_of"]
