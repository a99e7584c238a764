"""`cnndeploy export RUN_DIR --onnx`: model.onnx with metadata, checked and validated.

Validation follows optimum's `validate_model_outputs`: the exported file and the PyTorch
model run the same real test images at batch sizes 1 and 7, and the export fails (leaving
no file at the final path) if logits differ by more than the stated tolerance.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from cnndeploy.data import dataset_for
from cnndeploy.data.types import normalise
from cnndeploy.errors import CnnDeployError
from cnndeploy.fileio import atomic_path
from cnndeploy.artifacts import lock
from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.files import ONNX, spec
from cnndeploy.models.weights import load_run

log = logging.getLogger("cnndeploy")

OPSET = 20
ATOL = 1e-4          # max |logit difference| allowed, absolute ...
RTOL = 1e-4          # ... plus this fraction of the largest |logit|
# FP16 weights and activations carry 11 significant bits (about 3 decimal digits): the FP16 file
# is held to 1% of the largest |logit| (plus 1e-3) against the FP32 PyTorch model.
FP16_ATOL, FP16_RTOL = 1e-3, 1e-2
FP16 = "model.fp16.onnx"
VALIDATION_BATCHES = (1, 7)


def max_opset() -> int:
    """The newest opset torch.onnx's exporter writes; a larger one would be recorded but not produced."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_MAX_OPSET", OPSET))


class ExportError(CnnDeployError):
    """An export could not be produced or did not match the PyTorch model."""


def check_opset(opset: int) -> None:
    newest = max_opset()
    if not 17 <= opset <= newest:
        raise ExportError(f"--opset {opset}: expected 17 to {newest} (the opsets the installed torch.onnx "
                          "exporter writes)")


class Fp16Compute(torch.nn.Module):
    """float32 NCHW in, float32 logits out, FP16 weights and arithmetic in between.

    The float32 interface keeps the file's contract (and every runner) the same as model.onnx's;
    only its arithmetic changes, which is what an FP16-capable GPU or NPU runs faster.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


class WithPreprocess(torch.nn.Module):
    """uint8 NHWC pixels in, logits out: the normalisation travels inside the graph."""

    def __init__(self, model: torch.nn.Module, mean, std) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)))
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).float().view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() * self.scale - self.shift
        return self.model(x)


def _export_proto(model: torch.nn.Module, sample: torch.Tensor, opset: int):
    batch = torch.export.Dim("batch", min=1, max=65536)
    for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)  # exporter chatter, e.g. torchvision ops
    with warnings.catch_warnings():  # torch's exporter warns about its own internals
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(model, (sample,), dynamo=True, verbose=False, opset_version=opset,
                                    input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},))
    return program.model_proto


def validation_pixels(card: ModelCard, data_dir: str | None, n: int = max(VALIDATION_BATCHES)) -> np.ndarray:
    """The first `n` test images of the model's dataset as uint8 NHWC."""
    ds = dataset_for(card, data_dir=data_dir)
    return np.ascontiguousarray(ds.test_x[:n].transpose(0, 2, 3, 1))


def validation_images(card: ModelCard, data_dir: str | None, n: int = max(VALIDATION_BATCHES)) -> np.ndarray:
    """The first `n` test images, preprocessed as the model expects (float32 NCHW)."""
    return normalise(validation_pixels(card, data_dir, n).transpose(0, 3, 1, 2), card.mean, card.std)


def validate(path: Path, model: torch.nn.Module, images: np.ndarray, *, atol: float | None = None,
             rtol: float | None = None) -> dict:
    """Logits of the ONNX file vs the (FP32) PyTorch model on the same real images, per batch size."""
    from cnndeploy.runtime.runners import ort_session

    atol, rtol = ATOL if atol is None else atol, RTOL if rtol is None else rtol
    session = ort_session(path)
    worst, agree, total = 0.0, 0, 0
    with torch.no_grad():
        for bs in VALIDATION_BATCHES:
            x = np.ascontiguousarray(images[:bs])
            ref = model(torch.from_numpy(x)).numpy()
            got = session.run(["logits"], {"input": x})[0]
            diff = float(np.abs(ref - got).max())
            limit = atol + rtol * float(np.abs(ref).max())
            if got.shape != ref.shape or diff > limit:
                raise ExportError(f"{path.name.split('.')[0]}: ONNX output differs from PyTorch at batch {bs}: "
                                  f"max |diff| {diff:.3g} > tolerance {limit:.3g} (atol {atol} + rtol {rtol} "
                                  "x max|logit|)")
            worst = max(worst, diff)
            agree += int((ref.argmax(1) == got.argmax(1)).sum())
            total += bs
    return {"max_abs_diff": worst, "top1_agreement": agree / total, "batches": list(VALIDATION_BATCHES),
            "tolerance": f"atol {atol} + rtol {rtol} x max|logit|"}


def _write(final: Path, model: torch.nn.Module, inputs: np.ndarray, card: ModelCard, opset: int,
           extra: dict[str, str], *, reference: torch.nn.Module | None = None, atol: float | None = None,
           rtol: float | None = None) -> dict:
    import onnx

    # A C-contiguous sample: validation images are an NHWC transpose, and a channels_last sample
    # makes the exporter spell the pooling as as_strided (Gather), which OpenVINO's INT8 path
    # miscomputes (p50 ResNet-18: 5.6 dB at the logits, -15 points).
    proto = _export_proto(model, torch.from_numpy(np.ascontiguousarray(inputs[:2])), opset)
    for key, value in {**card.to_onnx_props(), **extra}.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"cnndeploy {card.model} trained on {card.dataset}"
    with atomic_path(final) as tmp:
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        return validate(tmp, reference or model, inputs, atol=atol, rtol=rtol)


def export_onnx(run_dir: str | os.PathLike, *, out: str | os.PathLike | None = None, opset: int = OPSET,
                data_dir: str | None = None, with_preprocess: bool = False,
                fp16: bool = False) -> tuple[Path, dict]:
    """Write RUN_DIR/model.onnx (or `out`); return its path and the validation report.

    With `with_preprocess`, also model.uint8.onnx: uint8 NHWC pixels in, normalisation inside.
    With `fp16`, also model.fp16.onnx: FP16 arithmetic behind the same float32 interface,
    validated against the FP32 PyTorch model with FP16_ATOL/FP16_RTOL.
    """
    check_opset(opset)
    model, card = load_run(run_dir)
    final = Path(out) if out else Path(run_dir) / ONNX
    with lock.writing(final.parent, command="cnndeploy export", what="--out" if out else "RUN_DIR"):
        return _export_locked(final, model, card, opset=opset, data_dir=data_dir,
                              with_preprocess=with_preprocess, fp16=fp16)


def _export_locked(final: Path, model: torch.nn.Module, card: ModelCard, *, opset: int, data_dir: str | None,
                   with_preprocess: bool, fp16: bool) -> tuple[Path, dict]:
    images = validation_images(card, data_dir)
    report = _write(final, model, images, card, opset, {})
    if with_preprocess:
        pixels = validation_pixels(card, data_dir)
        wrapped = WithPreprocess(model, card.mean, card.std).eval()
        uint8 = spec("model.uint8.onnx")
        report["uint8"] = _write(final.with_name(final.stem + ".uint8.onnx"), wrapped, pixels, card, opset,
                                 {"input_format": uint8.input})
    if fp16:
        report["fp16"] = _write(final.with_name(final.stem + ".fp16.onnx"), Fp16Compute(model).eval(), images,
                                card, opset, {"compute_precision": spec(FP16).precision}, reference=model,
                                atol=FP16_ATOL, rtol=FP16_RTOL)
    log.debug("exported %s: max |logit diff| %.2e vs PyTorch, top-1 agreement %.0f%% (batches %s)",
             final, report["max_abs_diff"], 100 * report["top1_agreement"], report["batches"])
    return final, report
