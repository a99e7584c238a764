"""Which layers an INT8 QDQ file loses its accuracy in: a per-layer SQNR ranking.

The float model compared is the pre-processed one quantize_file quantizes (prepare_float), so
every ranked node name is valid for `quantize_file(..., nodes_to_exclude=...)`.

Matching follows onnxruntime.quantization.qdq_loss_debug: float tensor X is, in the QDQ file,
X_DequantizeLinear_Output (or X itself when X is a graph output and the producer writes
X_QuantizeLinear_Input), and SQNR is as its compute_signal_to_quantization_noice_ratio:
20*log10(||float|| / ||float - qdq||) over all images (capped at EXACT_DB for an exact match).
The activations are compared by an equivalent streaming comparison, not by its
collect_activations/create_activation_matching: those keep every tensor of every batch in
memory (it can reach gigabytes for a ResNet on 512 images) and match tensors, not nodes, while
the quantizer renames node outputs (for target cpu a Conv's ReLU is folded into its output
QuantizeLinear, so the Conv writes the ReLU's tensor). Here a node is found by its name in both
files, only the tensors the ranking needs are fetched, and squared norms add up batch by batch.
Both files run with graph optimizations off, so the QDQ arithmetic is simulated as written.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cnndeploy.errors import CnnDeployError
from cnndeploy.quant.ptq import COMPUTE_OPS, prepare_float
from cnndeploy.runtime.onnxruntime_import import onnxruntime

_DQ_OUT = "_DequantizeLinear_Output"    # onnxruntime.quantization.quant_utils.DEQUANT_OUTPUT_SUFFIX
_Q_IN = "_QuantizeLinear_Input"         # ... QUANT_INPUT_SUFFIX
_EPS = float(np.finfo(float).eps)       # as qdq_loss_debug: an all-zero float tensor is no division by 0
# An exact match (no noise at all: a layer left in float, or an all-zero tensor such as the
# zero-initialised last BatchNorm of an untrained ResNet block) would be +inf dB; it is capped so
# that every number stays finite and sortable, and such a layer ranks last, not first.
EXACT_DB = 200.0


@dataclass(frozen=True)
class LayerError:
    """How far one Conv/Gemm/MatMul node of the INT8 file strays from the float model.

    node:          node name, valid for quantize_file(nodes_to_exclude=...)
    op_type:       Conv, Gemm or MatMul
    output:        the float-model tensor compared: the node's output as the QDQ file quantizes it
                   (for target cpu a following ReLU folded into that quantization: the ReLU's output)
    sqnr_db:       SQNR of that tensor after its QuantizeLinear/DequantizeLinear vs float; the
                   error of everything up to and including this layer
    input_sqnr_db: SQNR of the node's activation input as the node reads it (after its DQ)
    local_loss_db: input_sqnr_db - sqnr_db: the dB this layer loses itself (weights rounded,
                   output rounded); may be slightly negative where a layer averages noise away
    """
    node: str
    op_type: str
    output: str
    sqnr_db: float
    input_sqnr_db: float
    local_loss_db: float

    def as_dict(self) -> dict[str, str | float]:
        return asdict(self)


def _base(name: str) -> str:
    for suffix in (_DQ_OUT, _Q_IN):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _session(model, outputs: list[str]):
    """An onnxruntime session of `model` (ModelProto) that also returns the tensors `outputs`."""
    import onnx

    ort = onnxruntime()
    present = {o.name for o in model.graph.output}
    for name in outputs:
        if name not in present:  # an intermediate tensor made a graph output; its shape is left open
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)
    opts = ort.SessionOptions()
    # No fusions: the QDQ arithmetic is simulated exactly as written, as qdq_loss_debug runs it.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


def _pairs(fp32_model, int8_model) -> tuple[list[tuple[str, str, str, str, str, str]], list[tuple[str, str]]]:
    """Per ranked node (node, op, float out, qdq out, float in, qdq in) and the (float, qdq) pairs."""
    qnodes = {n.name: n for n in int8_model.graph.node}
    qtensors = {t for n in int8_model.graph.node for t in n.output} | {i.name for i in int8_model.graph.input}
    ftensors = {t for n in fp32_model.graph.node for t in n.output} | {i.name for i in fp32_model.graph.input}
    rows, missing = [], []
    for node in fp32_model.graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        q = qnodes.get(node.name)
        if q is None or q.op_type != node.op_type:
            missing.append(node.name)
            continue
        raw = q.output[0]
        f_out = _base(raw)
        if f_out + _DQ_OUT in qtensors:      # the node's output quantized: compare what consumers read
            q_out = f_out + _DQ_OUT
        elif raw.endswith(_Q_IN):           # a graph output: its DequantizeLinear writes the name itself
            q_out = f_out
        else:                               # left in float (excluded), no QDQ after it
            q_out = raw
        q_in = q.input[0]
        f_in = _base(q_in)
        if f_out not in ftensors or f_in not in ftensors:
            missing.append(node.name)
            continue
        rows.append((node.name, node.op_type, f_out, q_out, f_in, q_in))
    if missing:
        raise CnnDeployError(f"the INT8 file does not match the float model: node(s) {', '.join(missing)} "
                             "not found alike in both (was it quantized from this file by cnndeploy quant?)")
    pairs = sorted({(r[2], r[3]) for r in rows} | {(r[4], r[5]) for r in rows})
    return rows, pairs


def _sqnr_db(signal: float, noise: float) -> float:
    """20*log10(||float|| / ||float - qdq||) from the squared norms, at most EXACT_DB."""
    if noise == 0:
        return EXACT_DB
    return min(EXACT_DB, 20 * math.log10(max(math.sqrt(signal), _EPS) / math.sqrt(noise)))


def _compare(fp32_model, int8_model, pairs: list[tuple[str, str]], images: np.ndarray,
             batch_size: int) -> dict[tuple[str, str], float]:
    """SQNR (dB) of each (float tensor, qdq tensor) pair over all `images`, streamed by batch."""
    f_names = sorted({f for f, _ in pairs})
    q_names = sorted({q for _, q in pairs})
    fsess, qsess = _session(fp32_model, f_names), _session(int8_model, q_names)
    f_in, q_in = fsess.get_inputs()[0].name, qsess.get_inputs()[0].name
    signal = dict.fromkeys(pairs, 0.0)
    noise = dict.fromkeys(pairs, 0.0)
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)
        fvals = dict(zip(f_names, fsess.run(f_names, {f_in: batch})))
        qvals = dict(zip(q_names, qsess.run(q_names, {q_in: batch})))
        for f, q in pairs:
            a, b = fvals[f].astype(np.float64), qvals[q].astype(np.float64)
            if a.shape != b.shape:
                raise CnnDeployError(f"tensor {f!r}: float shape {a.shape} but INT8 shape {b.shape}")
            signal[(f, q)] += float(np.sum(a * a))
            noise[(f, q)] += float(np.sum((a - b) ** 2))
    return {p: _sqnr_db(signal[p], noise[p]) for p in pairs}


def _check_images(images: np.ndarray, batch_size: int) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0 or images.dtype.kind != "f":
        raise CnnDeployError(f"images: expected normalised float NCHW images, got shape {images.shape} "
                             f"of {images.dtype}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CnnDeployError(f"batch_size {batch_size!r}: expected a positive integer")
    return images


def layer_sensitivity(fp32_onnx: Path, int8_onnx: Path, images: np.ndarray, *,
                      batch_size: int = 32) -> list[LayerError]:
    """Rank the Conv/Gemm/MatMul nodes of `int8_onnx` by the SQNR they lose, most sensitive first.

    `fp32_onnx` is the file `int8_onnx` was quantized from (model.onnx); it is pre-processed like
    quantize_file does it in a temporary directory. `images`: normalised float32 NCHW training
    images (calibration images serve). Ties in local loss go to the lower output SQNR.
    """
    import onnx

    images = _check_images(images, batch_size)
    with tempfile.TemporaryDirectory(prefix="cnndeploy-sens-") as tmp:
        fp32_model = onnx.load(str(prepare_float(Path(fp32_onnx), Path(tmp) / "prepared.onnx")))
    int8_model = onnx.load(str(int8_onnx))
    rows, pairs = _pairs(fp32_model, int8_model)
    sqnr = _compare(fp32_model, int8_model, pairs, images, batch_size)
    errors = []
    for node, op, f_out, q_out, f_in, q_in in rows:
        out_db, in_db = sqnr[(f_out, q_out)], sqnr[(f_in, q_in)]
        errors.append(LayerError(node=node, op_type=op, output=f_out, sqnr_db=round(out_db, 4),
                                 input_sqnr_db=round(in_db, 4), local_loss_db=round(in_db - out_db, 4)))
    return sorted(errors, key=lambda e: (-e.local_loss_db, e.sqnr_db, e.node))


def output_sqnr_db(fp32_onnx: Path, int8_onnx: Path, images: np.ndarray, *, batch_size: int = 32) -> float:
    """SQNR (dB) of the INT8 file's first output (the logits) vs the float file's on `images`."""
    import onnx

    images = _check_images(images, batch_size)
    fp32_model, int8_model = onnx.load(str(fp32_onnx)), onnx.load(str(int8_onnx))
    f_out, q_out = fp32_model.graph.output[0].name, int8_model.graph.output[0].name
    return round(_compare(fp32_model, int8_model, [(f_out, q_out)], images, batch_size)[(f_out, q_out)], 4)


def fallback_order(errors: list[LayerError]) -> list[str]:
    """Node names to keep in float one at a time, most sensitive first (layer_sensitivity's order)."""
    ranked = sorted(errors, key=lambda e: (-e.local_loss_db, e.sqnr_db, e.node))
    return [e.node for e in ranked]
