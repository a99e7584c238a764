"""Export a run directory: ONNX (validated against PyTorch), TensorRT engines, a Triton repository."""

from cnndeploy.export.onnx_export import export_onnx

__all__ = ["export_onnx"]
