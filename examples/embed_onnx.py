"""Classify an image with a cnndeploy ONNX file using only onnxruntime, numpy and pillow.

    python examples/embed_onnx.py runs/lenet5-mnist/model.onnx digit.png

Everything needed — classes, input size, channels, mean, std — is read from the file's metadata.
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

if len(sys.argv) != 3:
    usage = next((line.strip() for line in (__doc__ or "").splitlines()  # None under python -OO
                  if line.strip().startswith("python ")), "python embed_onnx.py MODEL.onnx IMAGE")
    print(f"usage: {usage}", file=sys.stderr)
    sys.exit(2)

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
classes = json.loads(meta["classes"])
mean = np.array(json.loads(meta["mean"]), np.float32)[:, None, None]
std = np.array(json.loads(meta["std"]), np.float32)[:, None, None]

image = Image.open(sys.argv[2]).convert("L" if meta["channels"] == "1" else "RGB")
image = image.resize((int(meta["width"]), int(meta["height"])), Image.BILINEAR)
x = np.asarray(image, np.float32) / 255.0
x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)              # HWC -> CHW
x = ((x - mean) / std)[None].astype(np.float32)                     # add the batch axis

logits = session.run(None, {session.get_inputs()[0].name: x})[0][0]
probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
for i in np.argsort(-probs)[:3]:
    print(f"{classes[i]}\t{probs[i]:.4f}")
