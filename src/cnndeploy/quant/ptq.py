"""`cnndeploy quant RUN_DIR --target cpu|tensorrt`: static INT8 quantization in QDQ format.

- cpu:      uint8 activations, int8 per-channel weights -> the fast form for x86 VNNI kernels.
- tensorrt: symmetric int8 activations and weights (zero point 0), per-channel weights ->
            the explicit-quantization form TensorRT consumes.
On an x86 CPU without VNNI the cpu flavour's weights are 7-bit (onnxruntime's reduce_range): full-range
weights overflow that CPU's int16 dot products (system.cpu_int8_saturates). `--reduce-range` overrides.
The quantized file is then evaluated on the whole test set next to model.onnx.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cnndeploy.artifacts import lock
from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.files import ONNX, QUANT_TARGETS
from cnndeploy.artifacts.records import QuantRecord, read_quant, write_quant_entry
from cnndeploy.errors import CnnDeployError
from cnndeploy.fileio import atomic_path, sha256_file
from cnndeploy.runtime.onnxruntime_import import onnxruntime

log = logging.getLogger("cnndeploy")

TARGETS = ("cpu", "tensorrt")
METHODS = ("minmax", "entropy", "percentile")


def _quant_settings(target: str) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType

    if target == "cpu":
        return {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8,
                "extra_options": {"WeightSymmetric": True}}
    return {"activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
            # TensorRT keeps biases in float (it fuses them itself); int32 bias DQ nodes it rejects.
            "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}}


def reduce_range_for(target: str) -> bool:
    """Whether `target`'s weights are 7-bit by default: the cpu flavour, made on a CPU whose 8-bit
    kernels saturate (the file is most likely served where it is made; TensorRT's GPUs do not saturate)."""
    from cnndeploy.system import cpu_int8_saturates

    return target == "cpu" and cpu_int8_saturates()


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


COMPUTE_OPS = ("Conv", "Gemm", "MatMul")  # the nodes whose INT8 arithmetic costs accuracy (and buys speed)


def prepare_float(fp32: Path, out: Path) -> Path:
    """Write the pre-processed float model quantize_file quantizes (quant_pre_process) to `out`.

    Its node names are the ones `nodes_to_exclude` and the sensitivity ranking speak of; the
    same `fp32` always gives the same file, so names taken from one call hold for the next.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32), str(out), skip_symbolic_shape=True)
    return Path(out)


def check_node_names(prepared: Path, names: Sequence[str], *, what: str) -> None:
    """Refuse names that are no node of `prepared`: quantize_static would silently ignore them."""
    import onnx

    graph = onnx.load(str(prepared), load_external_data=False).graph
    known = {n.name for n in graph.node}
    unknown = [n for n in names if n not in known]
    if unknown:
        compute = [n.name for n in graph.node if n.op_type in COMPUTE_OPS]
        raise CnnDeployError(f"{what}: no node named {', '.join(map(repr, unknown))} in the prepared float "
                             f"model; valid names include its {'/'.join(COMPUTE_OPS)} nodes: "
                             f"{', '.join(compute) or '(none)'}")


def quantize_file(fp32: Path, out: Path, images, *, target: str, method: str,
                  nodes_to_exclude: Sequence[str] = (),
                  overrides: dict[str, list[dict[str, Any]]] | None = None,
                  reduce_range: bool | None = None) -> None:
    """Quantize `fp32` into `out` (atomically) with the given calibration images.

    `nodes_to_exclude`: node names of the pre-processed model (see prepare_float) left in float.
    `overrides` is onnxruntime's TensorQuantOverrides ({tensor name: [{"scale", "zero_point"}]}):
    those tensors get the given quantization instead of the calibrated one (QAT's trained ranges).
    `reduce_range`: 7-bit weights ([-64, 64]); None: `reduce_range_for(target)`.
    """
    from onnxruntime.quantization import QuantFormat, quantize_static

    from cnndeploy.quant.calibration import BatchReader

    if isinstance(nodes_to_exclude, str):  # a bare name would be taken letter by letter
        raise CnnDeployError(f"nodes_to_exclude {nodes_to_exclude!r}: expected a list of node names")
    excluded = list(nodes_to_exclude)
    with tempfile.TemporaryDirectory() as tmp, atomic_path(out) as final_tmp:
        prepped = prepare_float(fp32, Path(tmp) / "prepped.onnx")
        check_node_names(prepped, excluded, what="nodes_to_exclude")
        quantize_static(str(prepped), str(final_tmp), BatchReader(images, "input"),
                        quant_format=QuantFormat.QDQ, per_channel=True, calibrate_method=_method(method),
                        nodes_to_exclude=excluded,
                        reduce_range=reduce_range_for(target) if reduce_range is None else bool(reduce_range),
                        **_settings_with(target, overrides))


def _settings_with(target: str, overrides: dict[str, list[dict[str, Any]]] | None) -> dict[str, Any]:
    settings = _quant_settings(target)
    if overrides:
        settings["extra_options"] = {**settings["extra_options"], "TensorQuantOverrides": overrides}
    return settings


@dataclass(frozen=True)
class QuantConfig:
    """What `cnndeploy quant` runs with; recorded in quant.json beside the result."""
    target: str = "cpu"            # cpu | tensorrt
    calib_size: int = 512          # training images the activation ranges are calibrated on
    method: str = "minmax"         # minmax | entropy | percentile
    seed: int = 0                  # which training images
    reduce_range: bool | None = None   # 7-bit weights; None: where this CPU saturates (reduce_range_for)

    def resolved(self) -> "QuantConfig":
        """This config with `reduce_range` as it resolves on this machine (what quant.json records)."""
        if self.reduce_range is not None:
            return self
        return dataclasses.replace(self, reduce_range=reduce_range_for(self.target))

    def check(self) -> "QuantConfig":
        if self.target not in TARGETS:
            raise CnnDeployError(f"--target {self.target!r}: expected one of {', '.join(TARGETS)}")
        if self.method not in METHODS:
            raise CnnDeployError(f"--method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.calib_size < 1:
            raise CnnDeployError(f"--calib-size {self.calib_size}: expected a positive number of images")
        if self.reduce_range is not None and not isinstance(self.reduce_range, bool):
            raise CnnDeployError(f"reduce_range {self.reduce_range!r}: expected True, False or None (auto)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise CnnDeployError(f"--seed {self.seed!r}: expected an integer in [0, 2**64-1]")
        return self


def quantize_run(run_dir: str | os.PathLike, cfg: QuantConfig = QuantConfig(), *,
                 data_dir: str | None = None) -> QuantRecord:
    """Write RUN_DIR/model.int8-<target>.onnx and its quant.json entry; return that entry."""
    cfg.check()
    onnxruntime()  # onnxruntime.quantization comes with either flavour: one clear error without both
    run = Path(run_dir)
    card = ModelCard.read(run)
    with lock.writing(run, command="cnndeploy quant", what="RUN_DIR"):  # export_onnx takes it again
        return _quantize_locked(run, card, cfg, data_dir=data_dir)


def _quantize_locked(run: Path, card: ModelCard, cfg: QuantConfig, *, data_dir: str | None) -> QuantRecord:
    from cnndeploy.data import dataset_for
    from cnndeploy.export import export_onnx
    from cnndeploy.quant.calibration import calibration_images
    from cnndeploy.runtime import evaluate

    previous = read_quant(run)  # a malformed quant.json is refused before any work
    ds = dataset_for(card, data_dir=data_dir)  # once: calibration, and both evaluations
    images = calibration_images(card, size=cfg.calib_size, seed=cfg.seed, ds=ds)
    fp32 = run / ONNX
    if not fp32.is_file():
        log.info("no %s yet: exporting it first", fp32)
        export_onnx(run, data_dir=data_dir)
    out = run / QUANT_TARGETS[cfg.target]
    cfg = cfg.resolved()   # recorded as what reduce_range resolved to on this machine
    if cfg.reduce_range:
        log.info("%s: 7-bit weights (reduce_range), as this CPU's 8-bit kernels saturate on full-range ones",
                 out.name)
    quantize_file(fp32, out, images, target=cfg.target, method=cfg.method, reduce_range=cfg.reduce_range)
    identity = {"fp32_sha256": sha256_file(fp32), "test_set_sha256": _test_set_digest(ds)}
    base_accuracy = _measured_before(previous, identity)
    if base_accuracy is None:
        base_accuracy = evaluate.evaluate_onnx(fp32, ds=ds)["test_accuracy"]
    else:  # another target's quant measured this very file on these very images
        log.info("fp32 accuracy of %s reused from quant.json (same file, same test images)", fp32.name)
    quant = evaluate.evaluate_onnx(out, ds=ds)
    record = QuantRecord(file=out.name, target=cfg.target, method=cfg.method, calib_size=len(images),
                         calib_seed=cfg.seed, calib_split="train", fp32_accuracy=base_accuracy,
                         int8_accuracy=quant["test_accuracy"],
                         accuracy_drop_points=round(100 * (base_accuracy - quant["test_accuracy"]), 3),
                         fp32_bytes=fp32.stat().st_size, int8_bytes=out.stat().st_size, test_images=quant["n"],
                         dataset_source=quant["dataset_source"], config=dataclasses.asdict(cfg), **identity)
    write_quant_entry(run, record)
    return record


def _measured_before(entries: dict, identity: dict[str, str]) -> float | None:
    """The fp32 accuracy an earlier quant measured on this very file and these very test images."""
    for entry in entries.values():
        if not isinstance(entry, dict) or any(entry.get(k) != v for k, v in identity.items()):
            continue
        value = entry.get("fp32_accuracy")
        # quant.json lies in a folder users pass around: take only a plausible number from it
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
            return float(value)
    return None


def _test_set_digest(ds) -> str:
    """Identity of the test images and labels, so a reused accuracy is one of the same data."""
    h = hashlib.sha256()
    for array in (ds.test_x, ds.test_y):
        h.update(str((array.shape, array.dtype)).encode())
        h.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return h.hexdigest()
