"""Post-training INT8 quantization of the exported ONNX file (onnxruntime.quantization, QDQ)."""

from cnndeploy.quant.ptq import TARGETS, QuantConfig, quantize_run

__all__ = ["TARGETS", "QuantConfig", "quantize_run"]
