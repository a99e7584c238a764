"""Serving: the embeddable ONNX classifier (numpy + pillow + onnxruntime only)."""
