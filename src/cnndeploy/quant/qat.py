"""Quantization-aware fine-tuning (QAT): when PTQ cannot hold the accuracy, train through the INT8 rounding.

The fake-quant model mirrors what onnxruntime's PTQ (quant/ptq.py) writes for the target:

- weights of every Conv/Linear: per output channel, symmetric int8 in [-127, 127] (7-bit [-64, 64]
  where the cpu flavour is made with reduce_range), scale max|w| / 127 (or / 64) recomputed at every step (what ORT's minmax computes from the final weights);
- the input of every Conv/Linear: per tensor, uint8 asymmetric (cpu) or symmetric int8 in
  [-127, 127] with zero point 0 (tensorrt), from minmax ranges calibrated once, before the
  fine-tune, on training images; these ranges stay fixed while the weights learn around them.

`torch.fake_quantize_per_*_affine` round in the forward pass and pass the gradient straight
through (zero outside the range), so the ordinary epoch loop (train/loop.py `train_one_epoch`)
trains the model; BatchNorm layers (ResNets) are frozen in eval mode: their running statistics
are what the exported file folds into the convolutions, so the fine-tune trains against them.

Export: the fine-tuned float weights become an ordinary run directory (model.safetensors,
model.json, model.onnx through `export_onnx`, so metadata and validation are the standard
ones), and the QDQ file is made by the same `quantize_file` as PTQ, with the activation
scales and zero points of the Conv/Gemm inputs forced to the trained ones through
onnxruntime's TensorQuantOverrides. This route was chosen over exporting the fake-quant
model with torch.onnx because it yields the very graph PTQ yields (the bias as int32, Relu
folded into the quantization, Q on every Conv output so ORT's CPU fuses QLinearConv;
QuantizeBias off for TensorRT), which every runner, bench and the demo already load. What the
fake-quant model does not model are the quantization points ORT adds beyond the Conv/Linear
inputs are made to agree with it: the trained scale is forced back along the chain ORT quantizes
alike (a Conv/Gemm input through MaxPool/Reshape/Flatten and the Relu folded before it, to the
Conv/Gemm output), and the Q/DQ pair ORT puts on the logits is removed (they stay float, as trained).
Left to ORT's calibration on the same images are only points the trained model never quantized:
none in LeNet-5/AlexNet; in the ResNets the inputs of each residual Add (the BN-folded conv outputs)
and the features before global pooling. Measured agreement on LeNet-5: QDQ_RTOL, QDQ_MEAN_RTOL,
QDQ_TOP1 below. On a barely trained resnet20/mnist (by hand, not a test) those unmodelled points leave
the file 1-2% (mean) / 4-7% (max) of max|logit| off the fake-quant model, top-1 agreement 98-99%.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnndeploy.artifacts import files as layout
from cnndeploy.artifacts import lock, records
from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.records import ActivationQuant, QatRecord
from cnndeploy.data.holdout import Holdout
from cnndeploy.errors import CnnDeployError
from cnndeploy.fileio import atomic_path, write_json_atomic
from cnndeploy.models import weights
from cnndeploy.quant.ptq import TARGETS, quantize_file, reduce_range_for

log = logging.getLogger("cnndeploy")

# The QDQ file vs the fake-quant model (`load_fake_quant`) on real images, as fractions of the largest
# |logit|. Measured on LeNet-5/mnist-mini, 1000 held-out images: max 0.45% (cpu) / 0.88% (tensorrt),
# rounding ties flipped by int32 bias and accumulation order; mean 0.01%; top-1 agreement 100%. The float
# model.onnx of the same weights is 0.15-0.25% off on average: QDQ_MEAN_RTOL tells it from the QDQ file.
QDQ_RTOL = 0.02         # max |diff|
QDQ_MEAN_RTOL = 5e-4    # mean |diff|
QDQ_TOP1 = 0.99         # top-1 agreement
WEIGHT_RANGE = {False: (-127, 127), True: (-64, 64)}   # ORT's symmetric int8 weights; reduce_range: 7-bit
QUANTIZED = (nn.Conv2d, nn.Linear)
CALIB_BATCH = 256


def activation_range(target: str) -> tuple[int, int, bool]:
    """(qmin, qmax, symmetric) of the activations for `target`, as onnxruntime quantizes them."""
    if target == "cpu":
        return 0, 255, False       # QUInt8, asymmetric
    return -127, 127, True         # QInt8, ActivationSymmetric: ORT's symmetric int8 range


def activation_params(lo: float, hi: float, target: str) -> tuple[float, int]:
    """(scale, zero point) of a calibrated range, computed by onnxruntime's own `compute_scale_zp`."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    qmin, qmax, symmetric = activation_range(target)
    zero, scale = compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32),
                                   np.array(qmin), np.array(qmax), symmetric)
    return float(np.float32(scale)), int(zero)


class FakeQuantLayer(nn.Module):
    """A Conv2d/Linear whose input (per tensor, fixed) and weights (per channel, max|w|/qmax) are fake-quantized.

    Before `set_input_quant`, the input is only observed (its min and max), for calibration.
    """

    def __init__(self, inner: nn.Conv2d | nn.Linear, reduce_range: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.weight_qmin, self.weight_qmax = WEIGHT_RANGE[reduce_range]
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))
        self.qmin, self.qmax, self.calibrated = 0, 255, False
        self.lo, self.hi = float("inf"), float("-inf")

    def set_input_quant(self, scale: float, zero_point: int, qmin: int, qmax: int) -> None:
        self.scale.fill_(scale)
        self.zero_point.fill_(zero_point)
        self.qmin, self.qmax, self.calibrated = qmin, qmax, True

    def quantized_weight(self) -> torch.Tensor:
        w = self.inner.weight
        # the scale is a function of the weights but, as in standard QAT, no gradient flows through it
        absmax = w.detach().abs().amax(dim=tuple(range(1, w.ndim)))
        scale = torch.where(absmax > 0, absmax / self.weight_qmax, torch.ones_like(absmax)).float()
        zero = torch.zeros(len(scale), dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, self.weight_qmin, self.weight_qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.calibrated:
            self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
            return self.inner(x)
        x = torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)
        w = self.quantized_weight()
        m = self.inner
        if isinstance(m, nn.Linear):
            return nn.functional.linear(x, w, m.bias)
        return m._conv_forward(x, w, m.bias)


class FakeQuantModel(nn.Module):
    """The network with every Conv2d/Linear wrapped in a FakeQuantLayer; BatchNorm stays in eval mode."""

    def __init__(self, net: nn.Module, reduce_range: bool = False) -> None:
        super().__init__()
        self.net = copy.deepcopy(net)
        self.reduce_range = reduce_range   # 7-bit weights, as quantize_file(reduce_range=True) writes them
        self.layers: dict[str, FakeQuantLayer] = {}
        for name, module in list(self.net.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, QUANTIZED):
                    wrapped = FakeQuantLayer(child, reduce_range)
                    setattr(module, child_name, wrapped)
                    self.layers[f"{name}.{child_name}" if name else child_name] = wrapped
        self.order: list[str] = []   # the layers in the order the forward pass runs them

    def train(self, mode: bool = True) -> "FakeQuantModel":
        super().train(mode)
        for m in self.net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()   # frozen: the running statistics are what the exported file folds in
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def calibrate(self, images: np.ndarray, target: str) -> None:
        """Minmax ranges of every layer's input over `images` (float model), then fix their quantization."""
        qmin, qmax, _ = activation_range(target)
        seen: list[str] = []
        hooks = [layer.register_forward_pre_hook(lambda mod, args, name=name: seen.append(name))
                 for name, layer in self.layers.items()]
        self.eval()
        device = next(self.parameters()).device
        try:
            for i in range(0, len(images), CALIB_BATCH):
                self.net(torch.from_numpy(np.ascontiguousarray(images[i:i + CALIB_BATCH])).to(device))
        finally:
            for h in hooks:
                h.remove()
        self.order = list(dict.fromkeys(seen))
        for layer in self.layers.values():
            scale, zero = activation_params(layer.lo, layer.hi, target)
            layer.set_input_quant(scale, zero, qmin, qmax)

    def float_model(self) -> nn.Module:
        """A copy of the plain network with the fine-tuned float weights (no fake-quant)."""
        plain = copy.deepcopy(self.net)
        for name, module in list(plain.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, FakeQuantLayer):
                    setattr(module, child_name, child.inner)
        return plain


def load_fake_quant(run_dir: str | Path, device: str | torch.device = "cpu") -> FakeQuantModel:
    """The fake-quant model of a QAT run: its model.safetensors with the activation quantization of its
    qat.json, which are the scales and zero points written into its QDQ file (eval mode)."""
    record = QatRecord.read(Path(run_dir))
    if record is None:
        raise CnnDeployError(f"{run_dir} has no {layout.QAT}: not a run made by quantization-aware fine-tuning")
    net, _ = weights.load_run(run_dir)
    model = FakeQuantModel(net, record.reduce_range)
    by_name = {a["module"]: a for a in record.activations}
    missing = sorted(set(model.layers) - set(by_name))
    if missing:
        raise CnnDeployError(f"{Path(run_dir) / layout.QAT} lacks the quantization of layers {missing[:5]}")
    for name, layer in model.layers.items():
        a = by_name[name]
        layer.set_input_quant(a["scale"], a["zero_point"], a["qmin"], a["qmax"])
    return model.to(device).eval()


@dataclass
class QatResult:
    """What `qat_finetune` made and measured (also written as out_dir/qat.json)."""
    out_dir: Path
    file: str
    record: QatRecord

    @property
    def epochs(self) -> int:
        return self.record.epochs

    @property
    def seconds(self) -> float:
        return self.record.seconds

    @property
    def lr(self) -> float:
        return self.record.lr

    @property
    def path(self) -> Path:
        return self.out_dir / self.file


def qat_finetune(run_dir: Path, out_dir: Path, *, calib_images: np.ndarray, target: str = "cpu",
                 epochs: int = 1, lr: float | None = None, holdout: Holdout | None = None,
                 data_dir: str | None = None, device: str = "auto", progress: bool = True) -> QatResult:
    """Fine-tune RUN_DIR's model through INT8 fake-quant into the new run directory OUT_DIR.

    `calib_images`: normalised float32 NCHW training images (quant.calibration.calibration_images)
    the activation ranges are calibrated on, before the fine-tune. The fine-tune trains on the
    training split without `holdout` (else the one RUN_DIR's metrics.json records), SGD with
    Nesterov momentum and the run's weight decay, a cosine decay from `lr` (default: a tenth of the
    run's recorded lr, else of its recipe's). OUT_DIR gets model.json, model.safetensors (the
    fine-tuned float weights), model.onnx, the target's QDQ file and qat.json (written last: its
    presence marks a finished QAT run); no metrics.json, as it is no training run of its own. The
    fine-tune computes in fp32 (no bf16 autocast around the fake-quant rounding).
    """
    if target not in TARGETS:
        raise CnnDeployError(f"target {target!r}: expected one of {', '.join(TARGETS)}")
    if type(epochs) is not int or epochs < 1:
        raise CnnDeployError(f"epochs {epochs!r}: expected a positive integer")
    if lr is not None and not (records.fits(lr, float) and lr > 0):
        raise CnnDeployError(f"lr {lr!r}: expected a positive number")
    images = np.asarray(calib_images)
    if images.dtype != np.float32 or images.ndim != 4 or not len(images):
        raise CnnDeployError("calib_images: expected normalised float32 NCHW images (at least one), such as "
                             "quant.calibration.calibration_images returns")
    run, out = Path(run_dir), Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CnnDeployError(f"{out} is a file; expected a folder for the QAT run")
    if out.resolve() == run.resolve():
        raise CnnDeployError(f"{out}: QAT writes a new run directory; choose another folder than the parent run")
    net, card = weights.load_run(run)
    original = _recorded_config(run)
    with lock.writing(out, command="cnndeploy qat"):   # export_onnx takes it again
        if any((out / name).exists() for name in (layout.MODEL_JSON, layout.WEIGHTS, layout.METRICS, layout.QAT)):
            raise CnnDeployError(f"{out} already holds a run; choose another folder (nothing was overwritten)")
        return _finetune_into(run, out, net, card, original, images, target=target, epochs=epochs, lr=lr,
                              holdout=holdout, data_dir=data_dir, device=device, progress=progress)


def _recorded_config(run: Path) -> dict:
    """The parent's recorded lr, batch size, weight decay, label smoothing and holdout, where usable."""
    config = records.read_metrics(run).get("config", {})
    usable = {"lr": float, "batch_size": int, "weight_decay": float, "label_smoothing": float,
              "holdout": int, "holdout_seed": int}
    return {k: v for k, v in config.items() if k in usable and records.fits(v, usable[k]) and v >= 0}


def _finetune_into(run: Path, out: Path, net: nn.Module, card: ModelCard, original: dict, images: np.ndarray,
                   *, target: str, epochs: int, lr: float | None, holdout: Holdout | None, data_dir: str | None,
                   device: str, progress: bool) -> QatResult:
    from cnndeploy.data import dataset_for
    from cnndeploy.data.device import DeviceSplit, augment_for
    from cnndeploy.devices import pick_device
    from cnndeploy.export import export_onnx
    from cnndeploy.models import get_spec
    from cnndeploy.train.fit import fitted_batch_size
    from cnndeploy.train.loop import evaluate, train_one_epoch
    from cnndeploy.train.schedule import lr_at

    if images.shape[1:] != card.shape:
        raise CnnDeployError(f"calib_images have shape {images.shape[1:]}; {run} takes {card.shape}")
    dev = pick_device(device)
    recipe = get_spec(card.model).recipe(card.dataset)
    if holdout is None:
        holdout = Holdout(original.get("holdout", 0), original.get("holdout_seed", 0))
    ds = dataset_for(card, data_dir=data_dir)
    train_ds, val_x, val_y = holdout.split(ds)   # the fine-tune never sees the validation images
    lr = lr or (original.get("lr") or recipe.lr) / 10
    batch = fitted_batch_size(original.get("batch_size") or recipe.batch_size, len(train_ds.train_y))
    if len(train_ds.train_y) < 2:
        raise CnnDeployError(f"{len(train_ds.train_y)} training image(s) left for the fine-tune; expected at least 2")

    model = FakeQuantModel(net, reduce_range_for(target)).to(dev)
    model.calibrate(images, target)
    split_args = {"mean": card.mean, "std": card.std, "device": dev}
    train_split = DeviceSplit(train_ds.train_x, train_ds.train_y, **split_args)
    val_split = DeviceSplit(val_x, val_y, **split_args) if len(val_y) else None
    before = evaluate(model, val_split)["accuracy"] if val_split else None
    decay = [p for p in model.parameters() if p.ndim > 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": original.get("weight_decay", recipe.weight_decay)},
                                 {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0}],
                                lr=lr, momentum=0.9, nesterov=True)
    steps = epochs * train_split.num_batches(batch, drop_last=True)
    schedule = dict(total_steps=steps, peak=lr, warmup=0.0, schedule="cosine")
    loss_fn = nn.CrossEntropyLoss(label_smoothing=original.get("label_smoothing", recipe.label_smoothing))
    gen = torch.Generator(device=dev).manual_seed(0)
    step, t0 = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        stats = train_one_epoch(model, train_split, optimizer, lr_at=lambda s: lr_at(s, **schedule), step=step,
                                epoch=epoch, batch_size=batch, augment=augment_for(ds.name), generator=gen,
                                loss_fn=loss_fn, precision="fp32", progress=progress)
        step = stats["steps"]
        log.info("QAT epoch %d/%d  train loss %.4f acc %.4f", epoch, epochs, stats["train_loss"],
                 stats["train_accuracy"])
    seconds = time.perf_counter() - t0
    after = evaluate(model, val_split)["accuracy"] if val_split else None

    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    weights.save_weights(out / layout.WEIGHTS, model.float_model())
    write_json_atomic(out / layout.MODEL_JSON, card.to_json())
    fp32, _ = export_onnx(out, data_dir=data_dir)
    qdq = out / layout.QUANT_TARGETS[target]
    activations = _write_qdq(model, fp32, qdq, images, target)
    val_int8 = _onnx_accuracy(qdq, val_split) if val_split else None
    record = QatRecord(source_run=str(run), file=qdq.name, target=target, epochs=epochs, lr=lr, batch_size=batch,
                       seconds=round(seconds, 3), seconds_per_epoch=round(seconds / epochs, 3),
                       train_images=len(train_ds.train_y), holdout=holdout.size, holdout_seed=holdout.seed,
                       calib_size=len(images), calib_split="train",
                       batchnorm="frozen (eval mode: running statistics, as folded into the export)",
                       val_images=len(val_y), val_accuracy_before=before, val_accuracy_after=after,
                       val_accuracy_int8=val_int8, activations=activations, reduce_range=model.reduce_range)
    record.write(out)
    return QatResult(out_dir=out, file=qdq.name, record=record)


def _quantized_nodes(model_proto) -> list:
    """The Conv/Gemm/MatMul nodes with a weight initializer, in graph order."""
    inits = {i.name for i in model_proto.graph.initializer}
    return [n for n in model_proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in inits]


# Ops whose output ORT quantizes with their input's scale and zero point (a max or a reshape of
# quantized values is exact), and the activations it removes into the quantization before them.
SHARED_SCALE = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity")
REMOVABLE = ("Relu", "Clip")


def _sharing(graph, tensor: str) -> list[str]:
    """`tensor` and the tensors before it that ORT gives the same quantization: back through the
    shared-scale ops and a Relu/Clip it folds in, so the whole chain carries the trained scale."""
    made_by = {o: n for n in graph.graph.node for o in n.output}
    users: dict[str, int] = {}
    for n in graph.graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    chain = [tensor]
    node = made_by.get(tensor)
    while node is not None and node.op_type in SHARED_SCALE + REMOVABLE and users.get(node.input[0]) == 1:
        chain.append(node.input[0])
        node = made_by.get(node.input[0])
    return chain


def _paired_layers(model: FakeQuantModel, graph, file: str) -> list[tuple[object, str]]:
    """Each quantized node of `graph` with the model layer whose weight it holds.

    By the weight initializer's name first: the exporter names it after the parameter
    (`layers.2.shortcut.0.weight`). Position alone is wrong, as quant_pre_process's optimizer may
    reorder independent branches (it put ResNet shortcuts before their block's conv1). A node whose
    initializer is named otherwise takes the next layer in forward order with its weight's shape.
    """
    shapes = {i.name: tuple(i.dims) for i in graph.graph.initializer}
    nodes = _quantized_nodes(graph)
    if len(nodes) != len(model.order):
        raise CnnDeployError(f"{file} has {len(nodes)} Conv/Gemm/MatMul layers, the model {len(model.order)}: "
                             "cannot carry the trained quantization over")
    by_weight = {f"{name}.weight": name for name in model.order}
    named = {n.input[1]: by_weight[n.input[1]] for n in nodes if n.input[1] in by_weight}
    taken = set(named.values())
    left = [name for name in model.order if name not in taken]
    pairs = []
    for node in nodes:
        name = named.get(node.input[1])
        if name is None:
            shape = shapes[node.input[1]]
            name = next((m for m in left if _weight_fits(model.layers[m], shape)), None)
            if name is None:
                raise CnnDeployError(f"{file}: layer {node.name} has weights {shape}, which no layer of the model "
                                     "left unpaired has: cannot carry the trained quantization over")
            left.remove(name)
        if not _weight_fits(model.layers[name], shapes[node.input[1]]):
            w = tuple(model.layers[name].inner.weight.shape)
            raise CnnDeployError(f"{file}: layer {node.name} has weights {shapes[node.input[1]]}, {name} {w}: "
                                 "the graph's layer is not the model's layer of that name")
        pairs.append((node, name))
    return pairs


def _weight_fits(layer: FakeQuantLayer, shape: tuple[int, ...]) -> bool:
    w = tuple(layer.inner.weight.shape)
    return shape in (w, w[::-1])   # MatMul holds a Linear's weight transposed


def _write_qdq(model: FakeQuantModel, fp32: Path, qdq: Path, images: np.ndarray,
               target: str) -> list[ActivationQuant]:
    """The QDQ file by `quantize_file`, the Conv/Gemm input quantization forced to the trained one."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:   # the same pre-processing quantize_file runs: same tensor names
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
        graph = onnx.load(str(prepped))
    activations: list[ActivationQuant] = []
    overrides: dict[str, list[dict]] = {}
    for node, name in _paired_layers(model, graph, fp32.name):
        layer = model.layers[name]
        a = ActivationQuant(module=name, tensor=node.input[0], scale=float(layer.scale),
                            zero_point=int(layer.zero_point), qmin=layer.qmin, qmax=layer.qmax)
        previous = overrides.get(a["tensor"])
        if previous and (previous[0]["scale"] != a["scale"] or previous[0]["zero_point"] != a["zero_point"]):
            raise CnnDeployError(f"tensor {a['tensor']} feeds layers calibrated differently")
        dtype = np.uint8 if target == "cpu" else np.int8
        forced = [{"scale": np.array(a["scale"], np.float32), "zero_point": np.array(a["zero_point"], dtype)}]
        for tensor in _sharing(graph, a["tensor"]):
            overrides[tensor] = forced
        activations.append(a)
    with tempfile.TemporaryDirectory() as tmp:
        quantized = Path(tmp) / qdq.name
        quantize_file(fp32, quantized, images, target=target, method="minmax", overrides=overrides,
                      reduce_range=model.reduce_range)
        proto = _float_outputs(onnx.load(str(quantized)))
        _check_forced(proto, qdq.name, activations)
        with atomic_path(qdq) as final_tmp:
            onnx.save(proto, str(final_tmp))
            onnx.checker.check_model(str(final_tmp))
    return activations


def _float_outputs(proto):
    """Drop the QuantizeLinear/DequantizeLinear pair ORT puts on the graph outputs: the logits stay float,
    as they are in the fake-quant model that was trained (ORT's calibrated logit range would clip the
    logits of images beyond it, and a clipped tie changes the top-1 class). Their Gemm still runs in
    int8 (ORT's QGemm and TensorRT both take a float output)."""
    made_by = {o: n for n in proto.graph.node for o in n.output}
    users: dict[str, int] = {}
    for n in proto.graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    dropped = []
    for out in proto.graph.output:
        dq = made_by.get(out.name)
        q = made_by.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or users.get(q.output[0]) != 1 or users.get(q.input[0]) != 1:
            continue
        producer = made_by[q.input[0]]
        producer.output[list(producer.output).index(q.input[0])] = out.name
        dropped += [id(q), id(dq)]
    kept = [n for n in proto.graph.node if id(n) not in dropped]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    inits = [i for i in proto.graph.initializer if i.name in used]   # the dropped pair's scale and zero point
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inits)
    return proto


def _check_forced(proto, name: str, activations: list[ActivationQuant]) -> None:
    """Every Conv/Gemm input of the QDQ file is quantized with the trained scale and zero point."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    wanted = {a["tensor"]: a for a in activations}
    found = set()
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in wanted:
            continue
        a = wanted[node.input[0]]
        scale, zero = inits[node.input[1]], inits[node.input[2]]
        if not (np.isclose(float(scale), a["scale"], rtol=1e-6) and int(zero) == a["zero_point"]):
            raise CnnDeployError(f"{name}: {a['tensor']} was quantized with scale {float(scale)}, zero point "
                                 f"{int(zero)}, not the trained {a['scale']}, {a['zero_point']}")
        found.add(node.input[0])
    if set(wanted) - found:
        raise CnnDeployError(f"{name}: no QuantizeLinear of {sorted(set(wanted) - found)[:3]} "
                             "(the trained quantization was not applied)")


def _onnx_accuracy(path: Path, split) -> float:
    """Top-1 accuracy of an ONNX file on a (normalised, on-device) split, through onnxruntime."""
    from cnndeploy.runtime.runners import ort_session

    session = ort_session(path)
    correct = 0
    for x, y in split.batches(CALIB_BATCH):
        logits = session.run(["logits"], {"input": x.cpu().numpy()})[0]
        correct += int((logits.argmax(1) == y.cpu().numpy()).sum())
    return correct / len(split)
