"""Export a run directory to ONNX (validated against PyTorch); TensorRT comes with its issue."""

from cnndeploy.export.onnx_export import export_onnx

__all__ = ["export_onnx"]
