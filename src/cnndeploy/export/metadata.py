"""The metadata every ONNX file carries (GUIDE section 3), so any app can preprocess for it."""

from __future__ import annotations

import json
from typing import Any

from cnndeploy import __version__

JSON_KEYS = ("classes", "mean", "std", "widths")
REQUIRED = ("classes", "channels", "height", "width", "mean", "std", "model", "dataset")


def onnx_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """model.json -> string key/values for ModelProto.metadata_props."""
    props = {key: json.dumps(meta[key]) if key in JSON_KEYS else str(meta[key])
             for key in (*REQUIRED, "widths") if key in meta}
    props["dataset_source"] = str(meta.get("dataset_source", ""))
    props["cnndeploy_version"] = __version__
    props["preprocessing"] = "float32 NCHW, (pixel/255 - mean) / std per channel"
    return props
