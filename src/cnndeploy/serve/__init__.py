"""Serving: the embeddable ONNX classifier (runtime.py: numpy + pillow + onnxruntime only) and the
Gradio demo (app.py, `cnndeploy serve`; Gradio is imported only when the demo starts)."""
