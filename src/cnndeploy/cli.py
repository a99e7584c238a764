"""Thin command line: parse, then import the library function only when its command runs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from cnndeploy import __version__

if TYPE_CHECKING:
    from cnndeploy.train.fit import TrainConfig

MODELS = ("lenet5", "alexnet", "resnet18", "resnet20", "resnet56")  # checked against the registry in tests
PRECISIONS = ("auto", "fp32", "bf16")  # train/loop.py's, without importing torch here
SCHEDULES = ("linear", "cosine", "onecycle")  # train/schedule.py's
PRECISION_HELP = ("training compute; auto: bf16 on CUDA, fp32 on CPU (bf16 there pays on CPUs with "
                  "AVX512-BF16/AMX); evaluation is always fp32")
DEVICES = ("auto", "cpu", "cuda")
DEVICE_HELP = "auto: cuda when torch sees a GPU, else cpu"
DATA_DIR_HELP = ("folder holding mnist/ and cifar10/ (default: $CNNDEPLOY_DATA, then "
                 "~/.cache/cnndeploy/datasets)")
RUN_DIR_HELP = "a folder written by 'cnndeploy train' or 'cnndeploy prune' (model.json + model.safetensors)"
DATASET_HELP = "mnist, cifar10, or a path to an image folder/archive"
RECIPE = "default: the model's recipe for the dataset"

DESCRIPTION = """\
Train small CNNs (LeNet-5, AlexNet, ResNet-18/20/56) on MNIST, CIFAR-10 or your own image
folder, compress them (structured pruning, INT8 quantization), export them (ONNX, TensorRT,
a Triton Inference Server model repository), benchmark every variant on every backend
(accuracy, latency, throughput, size) and try them side by side in a web demo."""

EPILOG = """\
Typical order (each command reads the run directory the one before wrote):
  cnndeploy train --model lenet5 --dataset mnist --data-dir data/mnist-mini --out runs/lenet5-mnist
  cnndeploy prune runs/lenet5-mnist --amount 0.5 --data-dir data/mnist-mini
  cnndeploy export runs/lenet5-mnist runs/lenet5-mnist-pruned50 --onnx --data-dir data/mnist-mini
  cnndeploy quant runs/lenet5-mnist --target cpu --data-dir data/mnist-mini
  cnndeploy eval runs/lenet5-mnist/model.int8-cpu.onnx --data-dir data/mnist-mini
  cnndeploy bench runs/lenet5-mnist runs/lenet5-mnist-pruned50 --data-dir data/mnist-mini
  cnndeploy serve runs/lenet5-mnist runs/lenet5-mnist-pruned50
  cnndeploy optimize runs/lenet5-mnist --max-drop 0.5 --data-dir data/mnist-mini --out runs/lenet5-opt

or all of it in one resumable command that ends in report.md:
  cnndeploy pipeline --dataset mnist --data-dir data/mnist-mini --models lenet5 --out runs/quickstart

'cnndeploy COMMAND --help' lists a command's options and examples."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and epilogs (the examples) and shows every option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        # `is`, not `in`: a default of 0 equals False but is worth showing
        if (not action.option_strings or default is None or default is False
                or default is argparse.SUPPRESS or "%(default)" in text):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()

    def _split_lines(self, text: str, width: int) -> list[str]:
        # unbroken option names and paths (--data-dir, RUN_DIR-pruned50) read and paste better
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)


def _examples(*lines: str) -> str:
    return "Examples:\n" + "\n".join(f"  {line}" for line in lines)


def _parser(**kw) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(allow_abbrev=False, formatter_class=HelpFormatter, **kw)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text}")
    return value


SEED_MAX = 2**64 - 1  # torch.manual_seed's range


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**64-1], got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port in [1, 65535], got {text}")
    return value


def _fraction(low: float, high: float, closed_high: bool):
    def parse(text: str) -> float:
        value = float(text)
        if not (low <= value and (value <= high if closed_high else value < high)):
            raise argparse.ArgumentTypeError(
                f"expected a number in [{low}, {high}{']' if closed_high else ')'}, got {text}")
        return value
    return parse


def _ema_decay(text: str) -> float:
    value = float(text)
    if not (value == 0 or 0 < value < 1):
        raise argparse.ArgumentTypeError(f"expected a decay in (0, 1), or 0 for off, got {text}")
    return value


def _add_train(sub: argparse._SubParsersAction) -> None:
    # Options that are TrainConfig fields default to None, so that "typed" is "not None": --resume
    # refuses typed values that differ from the saved run's. Their help states the effective default.
    p = sub.add_parser(
        "train", help="train a model into a run directory",
        description="Train a model into a run directory (model.json, model.safetensors, metrics.json,\n"
                    "log.jsonl, curves); unset hyper-parameters come from the model's recipe for the\n"
                    "dataset (see README). A checkpoint is kept after every epoch, so an interrupted\n"
                    "run continues with --resume.",
        epilog=_examples(
            "cnndeploy train --model lenet5 --dataset mnist --data-dir data/mnist-mini --out runs/lenet5-mnist",
            "cnndeploy train --model lenet5 --dataset mnist --data-dir data/mnist-mini --epochs 2 --subset 2000 "
            "--device cpu"))
    p.add_argument("--model", required=True, choices=MODELS, help="the network to train")
    p.add_argument("--dataset", required=True, help=DATASET_HELP)
    p.add_argument("--epochs", type=_positive_int, help=RECIPE)
    p.add_argument("--batch-size", type=_positive_int, help=f"images per step ({RECIPE})")
    p.add_argument("--lr", type=_positive_float, help=f"peak learning rate ({RECIPE})")
    p.add_argument("--weight-decay", type=_fraction(0.0, 1.0, True),
                   help=f"SGD weight decay on conv/linear weights ({RECIPE})")
    p.add_argument("--label-smoothing", type=_fraction(0.0, 1.0, False),
                   help=f"in [0, 1) ({RECIPE})")
    p.add_argument("--warmup", type=_fraction(0.0, 1.0, True),
                   help=f"fraction of steps spent warming up ({RECIPE})")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help=f"learning rate after the warm-up: linear or cosine decay to zero, or onecycle "
                        f"(cosine up from lr/25 over the warm-up, cosine down to lr/250000) ({RECIPE}; "
                        "linear for every model today)")
    p.add_argument("--ema", type=_ema_decay, metavar="DECAY",
                   help="keep an exponential moving average of the weights (decay in (0, 1), such as 0.999, "
                        "warmed up as timm's); it is evaluated each epoch and saved as the model, the raw "
                        f"weights stay in the checkpoint; 0: off ({RECIPE}; off for every model today)")
    p.add_argument("--random-erasing", type=_fraction(0.0, 1.0, True), metavar="P",
                   help="probability of erasing one random rectangle (2-33%% of the image) of each training "
                        f"image to the mean colour ({RECIPE}; 0 for every model today)")
    p.add_argument("--device", choices=DEVICES, default=None, help=f"{DEVICE_HELP} (default: auto)")
    p.add_argument("--seed", type=_seed, default=None,
                   help="seed of the initial weights, data order and augmentation (default: 0)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help=f"{PRECISION_HELP} (default: auto)")
    p.add_argument("--subset", type=_positive_int, metavar="N",
                   help="train on a fixed random subset of N images (default: all of them)")
    p.add_argument("--holdout", type=_non_negative_int, default=None, metavar="N",
                   help="keep N training images (a seeded choice) out of training: the validation split "
                        "that `optimize` decides on (default: 0)")
    p.add_argument("--holdout-seed", type=_seed, default=None, help="which images --holdout keeps out (default: 0)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--download", action="store_true", default=None, help="fetch MNIST/CIFAR-10 if missing")
    p.add_argument("--out", help="run directory (default: runs/<model>-<dataset>)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out with its saved options; options typed "
                        "with it must match them, except --device, --data-dir and --precision")
    p.add_argument("--sync-bn", action="store_true", default=None,
                   help="under torchrun on GPUs: BatchNorm statistics over the whole global batch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="re-measure test accuracy of a run directory, ONNX file or TensorRT engine",
        description="Measure the test accuracy of a trained model on the whole test set of "
                    "its dataset;\nprints one line, or with --json the whole result.",
        epilog=_examples("cnndeploy eval runs/lenet5-mnist --data-dir data/mnist-mini",
                         "cnndeploy eval runs/lenet5-mnist/model.onnx --data-dir data/mnist-mini --json"))
    p.add_argument("run_dir", metavar="RUN_DIR|MODEL.onnx|MODEL.engine",
                   help=f"RUN_DIR: {RUN_DIR_HELP}; MODEL.onnx: written by 'cnndeploy export --onnx' or "
                        "'cnndeploy quant'; MODEL.engine: written by 'cnndeploy export --trt'")
    p.add_argument("--dataset", help="override the dataset recorded with the model "
                                     "(default: the one it was trained on)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help=f"for a RUN_DIR; {DEVICE_HELP}")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON (accuracy, test images, dataset source, model, file)")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a run directory to ONNX (validated against PyTorch), "
                       "TensorRT, or a Triton model repository",
        description="Export run directories to ONNX (checked against PyTorch on test images), to\n"
                    "TensorRT engines, and/or to a Triton Inference Server model repository.",
        epilog=_examples(
            "cnndeploy export runs/lenet5-mnist --onnx --data-dir data/mnist-mini",
            "cnndeploy export runs/lenet5-mnist --onnx --triton-repo runs/triton-models --data-dir data/mnist-mini"))
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help=f"one or more; {RUN_DIR_HELP}")
    p.add_argument("--onnx", action="store_true", help="write RUN_DIR/model.onnx")
    p.add_argument("--trt", action="store_true",
                   help="build a TensorRT engine (needs tensorrt and a GPU; where they are missing, --trt "
                        "alone fails and with --onnx the engine is skipped with a note)")
    p.add_argument("--fp16", action="store_true", help="with --trt: an fp16 engine")
    p.add_argument("--int8", action="store_true",
                   help="with --trt: an int8 engine from model.int8-trt.onnx (cnndeploy quant --target tensorrt)")
    p.add_argument("--with-preprocess", action="store_true",
                   help="also write model.uint8.onnx taking uint8 NHWC pixels (normalisation inside)")
    p.add_argument("--fp16-onnx", action="store_true",
                   help="with --onnx: also write model.fp16.onnx (FP16 weights and arithmetic, float32 in "
                        "and out; validated against PyTorch within 1e-3 + 1%% of the largest logit)")
    p.add_argument("--opset", type=_positive_int, default=20,
                   help="ONNX opset, from 17 up to the newest the installed torch.onnx exporter writes")
    p.add_argument("--out", help="ONNX path (default: RUN_DIR/model.onnx; one RUN_DIR only)")
    p.add_argument("--data-dir", help=f"where the test images used for validation are; {DATA_DIR_HELP}")
    t = p.add_argument_group("Triton Inference Server", "a model repository with one model per ONNX file "
                             "and engine of each RUN_DIR\n(needs tritonclient: pip install 'cnndeploy[triton]')")
    t.add_argument("--triton-repo", metavar="DIR", help="write (or add to) the model repository DIR "
                                                         "(default: none written)")
    t.add_argument("--max-batch-size", type=_positive_int, default=256, help="Triton's max_batch_size")
    t.add_argument("--preferred-batch-sizes", type=_int_list, default=[32, 128], metavar="N,N,...",
                   help="dynamic batching's preferred batch sizes")
    t.add_argument("--max-queue-delay-us", type=int, default=100,
                   help="how long Triton may wait to fill a preferred batch (microseconds)")
    t.add_argument("--triton-instances", choices=("cpu", "gpu"), default="cpu",
                   help="instance kind of the onnxruntime models (TensorRT plans always run on GPU)")
    t.add_argument("--instance-count", type=_positive_int, default=1, help="model instances (per GPU for gpu)")


def _add_quant(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quant", help="INT8 post-training quantization of RUN_DIR/model.onnx",
        description="Static INT8 quantization (QDQ, per-channel weights) calibrated on training images;\n"
                    "the result is evaluated on the whole test set. Exports RUN_DIR/model.onnx first\n"
                    "when it is missing.",
        epilog=_examples("cnndeploy quant runs/lenet5-mnist --target cpu --data-dir data/mnist-mini",
                         "cnndeploy quant runs/lenet5-mnist --target tensorrt --method entropy "
                         "--data-dir data/mnist-mini"))
    p.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    p.add_argument("--target", default="cpu", choices=("cpu", "tensorrt"),
                   help="cpu: uint8 activations (x86 VNNI); tensorrt: symmetric int8, zero point 0")
    p.add_argument("--calib-size", type=_positive_int, default=512, help="training images to calibrate on")
    p.add_argument("--method", default="minmax", choices=("minmax", "entropy", "percentile"),
                   help="how activation ranges are chosen from the calibration images")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the calibration subset")
    p.add_argument("--reduce-range", default="auto", choices=("auto", "on", "off"),
                   help="7-bit weights; auto: on for --target cpu where this x86 CPU lacks VNNI, whose "
                        "8-bit kernels overflow on full-range weights")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)


def _add_prune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune", help="structured channel pruning (Torch-Pruning) + fine-tune",
        description="Remove a fraction of the channels of every prunable layer group, then fine-tune;\n"
                    "writes a new run directory that every other command takes like a trained one.",
        epilog=_examples("cnndeploy prune runs/lenet5-mnist --amount 0.5 --data-dir data/mnist-mini",
                         "cnndeploy prune runs/lenet5-mnist --amount 0.3 --distill --out runs/lenet5-p30 "
                         "--data-dir data/mnist-mini"))
    p.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    p.add_argument("--amount", type=float, required=True, help="fraction of channels to remove, in (0, 1)")
    p.add_argument("--method", default="l2", choices=("l1", "l2", "taylor"),
                   help="channel importance: l1/l2 norm of the weights, or first-order Taylor")
    p.add_argument("--finetune-epochs", type=_positive_int,
                   help="default: 20%% of the original run's epochs, rounded down, at least 1")
    p.add_argument("--lr", type=_positive_float, help="fine-tune peak lr (default: a quarter of the original)")
    p.add_argument("--round-to", type=_non_negative_int, default=8, help="keep channel counts multiples of this (0: off)")
    p.add_argument("--out", help="the new run directory (default: RUN_DIR-pruned<percent>)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    p.add_argument("--precision", choices=PRECISIONS, help="fine-tune compute (default: the original run's)")
    p.add_argument("--distill", action="store_true",
                   help="fine-tune against the unpruned model's outputs (knowledge distillation, "
                        "T=4, weight 0.9); each step then also runs the unpruned model forward")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _duration(text: str) -> float:
    from cnndeploy.errors import CnnDeployError
    from cnndeploy.optimize.config import parse_duration

    try:
        return parse_duration(text)
    except CnnDeployError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None


def _fraction_list(text: str) -> tuple[float, ...]:
    if text.strip().lower() == "none":
        return ()
    try:
        values = tuple(float(v) for v in text.split(",") if v)
    except ValueError:
        values = ()
    if not values or any(not 0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected fractions in (0, 1) separated by commas, got {text!r}")
    return values


def _add_optimize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "optimize", help="the fastest deployable file within an accuracy budget, measured on this machine",
        description="Search pruning amounts x precision (FP32, INT8 of the target's flavour, BF16/FP16 where a\n"
                    "backend computes it) x the target's backends installed here; every decision reads\n"
                    "validation accuracy (train --holdout, else a seeded split of the training images),\n"
                    "latency is measured at --batch-size. An INT8 file over budget gets per-layer\n"
                    "sensitivity, float fallback one layer at a time, then QAT. Writes DIR/optimize.json,\n"
                    "optimize.md, pareto.png and the chosen file as DIR/best.onnx (lineage in its metadata).",
        epilog=_examples("cnndeploy optimize runs/lenet5-mnist --max-drop 0.5 --data-dir data/mnist-mini "
                         "--out runs/lenet5-opt",
                         "cnndeploy optimize runs/resnet18-cifar10 --max-drop 1.0 --batch-size 64 --time-budget 30m"))
    p.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    p.add_argument("--max-drop", type=_fraction(0.0, 100.0, False), required=True, metavar="POINTS",
                   help="accuracy points the chosen file may lose against FP32, on the validation split")
    p.add_argument("--target", default="cpu", choices=("cpu", "cuda"),
                   help="cpu: onnxruntime + OpenVINO, INT8 with uint8 activations; cuda: onnxruntime CUDA, "
                        "TensorRT, PyTorch, symmetric INT8")
    p.add_argument("--backends", type=lambda t: tuple(b for b in t.split(",") if b), default=None,
                   help="override the target's backends (comma-separated)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="the batch size latency is measured at")
    p.add_argument("--time-budget", type=_duration, default=None, metavar="DURATION",
                   help="e.g. 30m: stop trying new candidates when it is spent, report the best so far")
    p.add_argument("--amounts", type=_fraction_list, default=(0.3, 0.5, 0.7), metavar="A,A,...",
                   help="pruning amounts tried beside the unpruned model (default 0.3,0.5,0.7; none: no pruning)")
    p.add_argument("--reuse", metavar="DIR", help="an earlier optimize --out of the same RUN_DIR: copy its "
                                                  "fine-tuned pruned runs made with the same fine-tune "
                                                  "options instead of pruning again")
    p.add_argument("--finetune-epochs", type=_positive_int, help="per pruned amount (default: prune's, 20%% of "
                                                                 "the training run)")
    p.add_argument("--distill", default="auto", choices=("auto", "on", "off"),
                   help="fine-tune pruned models against the parent; auto: try both at the first amount")
    p.add_argument("--val-size", type=_positive_int, help="validation images when RUN_DIR kept none out "
                                                          "(default: 10%% of train, at most 5000)")
    p.add_argument("--val-seed", type=_seed, default=0, help="which training images --val-size takes")
    p.add_argument("--calib-size", type=_positive_int, default=512, help="INT8 calibration images (training split)")
    p.add_argument("--max-fallback", type=_non_negative_int, default=6, help="INT8 layers kept in float at most")
    p.add_argument("--qat-epochs", type=_non_negative_int, default=1, help="QAT epochs where fallback misses (0: off)")
    p.add_argument("--min-seconds", type=_positive_float, default=2.0, help="timing budget per measured row")
    p.add_argument("--threads", type=_positive_int, help="intra-op threads of every backend (default: theirs)")
    p.add_argument("--out", help="result folder (default: RUN_DIR-optimized)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="accuracy, latency and size of every variant on every backend",
        description="Measure every variant in the run directories (PyTorch weights, ONNX, INT8, TensorRT\n"
                    "engines) on every backend: test accuracy, latency percentiles, throughput, size;\n"
                    "writes bench.json, bench.csv, bench.md and plots. Backends or variants that cannot\n"
                    "run here become skipped rows.",
        epilog=_examples(
            "cnndeploy bench runs/lenet5-mnist --backends torch,ort --batch-sizes 1,32 --data-dir data/mnist-mini",
            "cnndeploy bench runs/lenet5-mnist runs/lenet5-mnist-pruned50 --threads 2 --data-dir data/mnist-mini"))
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help=f"one or more; {RUN_DIR_HELP}")
    p.add_argument("--backends", default="torch,ort",
                   help="comma list of torch,torch-compile,ort,ort-cuda,ort-trt,openvino,tensorrt "
                        "(openvino also adds a bf16 row of model.onnx where the CPU has AVX512-BF16 or AMX)")
    p.add_argument("--batch-sizes", type=_int_list, default=None, metavar="N,N,...",
                   help="batch sizes to time (default 1,32,256; 1,64,1024 where every backend computes on the GPU)")
    p.add_argument("--threads", type=_positive_int,
                   help="intra-op threads for torch, onnxruntime and OpenVINO (default: the libraries' own)")
    p.add_argument("--min-seconds", type=_positive_float, default=1.0, help="timing budget per row")
    p.add_argument("--out", help="folder for the results (default: bench/ in the first RUN_DIR, where "
                                  "'cnndeploy serve' finds it)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _size(text: str) -> int:
    """'5MB', '512k', '1.5GB' or a plain number of bytes."""
    units = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9}
    t = text.strip().lower()
    num = t.rstrip("kmgb")
    try:
        value = float(num) * units[t[len(num):]]
    except (ValueError, KeyError):
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 5MB, 512kB or 1000000, got {text!r}")
    return int(value)


def _add_pipeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline", help="train -> prune -> export -> quant -> TensorRT -> bench -> report.md",
        description="One command from nothing to report.md: train, prune, export, quant, TensorRT, bench.\n"
                    "Each stage is skipped when its outputs exist and are complete, so an interrupted\n"
                    "pipeline resumes. The default --models (lenet5,alexnet,resnet18) take over an hour\n"
                    "on a 2-core CPU; --models lenet5 takes about a minute there.",
        epilog=_examples(
            "cnndeploy pipeline --dataset mnist --data-dir data/mnist-mini --models lenet5 --out runs/quickstart",
            "cnndeploy pipeline --dataset mnist --data-dir data/mnist-mini --models lenet5,alexnet "
            "--epochs lenet5=6,alexnet=2"))
    p.add_argument("--dataset", required=True, help=DATASET_HELP)
    p.add_argument("--models", default="lenet5,alexnet,resnet18",
                   help=f"comma list of models ({', '.join(MODELS)}); the default takes over an hour on a "
                        "2-core CPU")
    p.add_argument("--epochs", help="N for every model, or per model: lenet5=6,resnet18=2 (default: recipes)")
    p.add_argument("--prune", type=float, default=0.5, help="fraction of channels to prune (0: skip pruning)")
    p.add_argument("--finetune-epochs", type=_positive_int, help="default: 20%% of each model's epochs, rounded down, at least 1")
    p.add_argument("--distill", action="store_true", help="fine-tune pruned models against the unpruned ones (KD)")
    p.add_argument("--backends", default="torch,ort,ort-cuda,openvino,tensorrt",
                   help="bench backends; absent ones appear as skipped rows")
    p.add_argument("--batch-sizes", type=_int_list, default=[1, 32, 256], metavar="N,N,...",
                   help="bench batch sizes")
    p.add_argument("--threads", type=_positive_int,
                   help="intra-op threads for torch, onnxruntime and OpenVINO (default: the libraries' own)")
    p.add_argument("--min-seconds", type=_positive_float, default=1.0, help="timing budget per bench row")
    p.add_argument("--device", default="auto", choices=DEVICES, help=f"training device; {DEVICE_HELP}")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--seed", type=_seed, default=0, help="training seed")
    p.add_argument("--out", default="runs/pipeline", help="folder for the run directories, bench and report.md")
    p.add_argument("--max-drop", type=_fraction(0.0, 100.0, False), metavar="POINTS",
                   help="then `optimize` each trained model within this many accuracy points (OUT/<run>-optimized)")
    p.add_argument("--time-budget", type=_duration, default=None, metavar="DURATION",
                   help="with --max-drop: time budget of each model's search, e.g. 30m")
    p.add_argument("--holdout", type=_non_negative_int, default=0, metavar="N",
                   help="training images kept out of training as the validation split optimize decides on")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="Gradio demo: every variant of the run directories answers the same image",
        description="A web demo (Gradio): every variant in the run directories (PyTorch, ONNX, INT8,\n"
                    "pruned) classifies the same uploaded image side by side.\n"
                    "Needs gradio: pip install 'cnndeploy[demo]'.",
        epilog=_examples("cnndeploy serve runs/lenet5-mnist",
                         "cnndeploy serve runs/lenet5-mnist runs/lenet5-mnist-pruned50 --port 8080"))
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help=f"one or more; {RUN_DIR_HELP}")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes the demo to the network: an explicit choice")
    p.add_argument("--port", type=_port, default=7860, help="TCP port to listen on")
    p.add_argument("--max-file-size", type=_size, default=5_000_000,
                   help="largest upload: bytes, or with a unit (5MB, 512kB)")
    p.add_argument("--share", action="store_true", help="ask Gradio for a public share link")
    p.add_argument("--max-queue", type=_positive_int, default=64, help="requests waiting at most")
    p.add_argument("--concurrency", type=_positive_int, default=4, help="requests served at once")


def build_parser() -> argparse.ArgumentParser:
    parser = _parser(prog="cnndeploy", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"cnndeploy {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of expected errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_parser)
    _add_train(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_quant(sub)
    _add_prune(sub)
    _add_bench(sub)
    _add_optimize(sub)
    _add_pipeline(sub)
    _add_serve(sub)
    return parser


def train_config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    """The TrainConfig of a parsed `train` command line, and the names of the options that were typed."""
    import dataclasses
    from pathlib import Path

    from cnndeploy.train.fit import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {name: value for name, value in vars(args).items() if value is not None and name in fields}
    explicit = set(given)
    if not given.get("out"):
        dataset_tag = Path(args.dataset).name.split(".")[0] or "data"
        given["out"] = f"runs/{args.model}-{dataset_tag}"
    return TrainConfig(**given), explicit


def _cmd_train(args: argparse.Namespace) -> int:
    from cnndeploy.train.distributed import PeerError, env_rank
    from cnndeploy.train.fit import train

    cfg, explicit = train_config_from_args(args)
    try:
        metrics = train(cfg, resume=args.resume, explicit=explicit, progress=not args.no_progress)
    except PeerError:
        return 2  # a torchrun worker whose rank 0 failed: rank 0 has printed why
    if env_rank() != 0:
        return 0  # under torchrun, rank 0 reports for all
    print(f"test accuracy {100 * metrics['test_accuracy']:.2f}% after {metrics['epochs']} epochs "
          f"({metrics['wall_seconds']:.1f}s) -> {cfg.out}")
    return 0


def _run_dirs(paths: Sequence[str]) -> list[str]:
    """RUN_DIR... as given, with each folder of run directories (a pipeline's --out) expanded to them."""
    from cnndeploy.artifacts.variants import expand_run_dirs

    return [str(p) for p in expand_run_dirs(list(paths))]


def _one_run_dir(path: str, command: str) -> str:
    from cnndeploy.errors import CnnDeployError

    runs = _run_dirs([path])
    if runs != [str(Path(path))]:
        raise CnnDeployError(f"{path} is not a run directory but holds {len(runs)}: {', '.join(runs)}; "
                             f"'cnndeploy {command}' takes one of them")
    return path


def _cmd_eval(args: argparse.Namespace) -> int:
    from cnndeploy.runtime.evaluate import evaluate_path

    targets = _run_dirs([args.run_dir]) if Path(args.run_dir).is_dir() else [args.run_dir]
    results = [evaluate_path(t, dataset=args.dataset, data_dir=args.data_dir, device=args.device)
               for t in targets]
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
        return 0
    for target, result in zip(targets, results):
        print(f"{target} ({result['model']}): test accuracy {100 * result['test_accuracy']:.2f}% on "
              f"{result['n']:,} test images ({result['dataset_source']})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from cnndeploy.errors import CnnDeployError

    if (args.fp16_onnx or args.with_preprocess) and not args.onnx:
        raise CnnDeployError("--fp16-onnx/--with-preprocess write extra ONNX files next to model.onnx: add --onnx")
    if not (args.onnx or args.trt or args.triton_repo):
        raise CnnDeployError("nothing to export: pass --onnx, --trt and/or --triton-repo DIR")
    if (args.fp16 or args.int8) and not args.trt:
        raise CnnDeployError("--fp16/--int8 choose the TensorRT engine's precision: add --trt "
                             "(an FP16 ONNX file is --onnx --fp16-onnx)")
    if args.onnx:
        from cnndeploy.export.onnx_export import check_opset

        check_opset(args.opset)  # before any RUN_DIR is read
    args.run_dirs = _run_dirs(args.run_dirs)
    if args.out and len(args.run_dirs) > 1:
        raise CnnDeployError("--out names one ONNX file: give one RUN_DIR with it")
    if args.triton_repo:
        from cnndeploy.export.triton import require_model_config

        require_model_config()  # fail before the slow exports if the repository cannot be checked
    trt_missing: list[str] = []
    if args.trt:
        from cnndeploy.runtime.tensorrt import missing_message, tensorrt_missing

        trt_missing = tensorrt_missing()
        if trt_missing and not (args.onnx or args.triton_repo):
            raise CnnDeployError(missing_message(trt_missing))  # nothing else asked for: fail before any work
    for run_dir in args.run_dirs:
        _export_one(args, run_dir, trt=args.trt and not trt_missing)
    if args.triton_repo:
        _export_triton(args)
    if trt_missing:  # the rest of what was asked for is done; only the engines cannot be built here
        print(f"skipped --trt: {missing_message(trt_missing)}", file=sys.stderr)
    return 0


def _export_one(args: argparse.Namespace, run_dir: str, *, trt: bool) -> None:
    if args.onnx:
        from cnndeploy.export import export_onnx

        path, report = export_onnx(run_dir, out=args.out, opset=args.opset, data_dir=args.data_dir,
                                   with_preprocess=args.with_preprocess, fp16=args.fp16_onnx)
        for name, r in (("", report), *((f" {k}", report[k]) for k in ("uint8", "fp16") if k in report)):
            print(f"{path}{name}: max |logit diff| {r['max_abs_diff']:.2e} vs PyTorch ({r['tolerance']}), "
                  f"top-1 agreement {100 * r['top1_agreement']:.1f}% at batch sizes {r['batches']}")
    if trt:
        from cnndeploy.export.tensorrt import build_engine

        for precision in [p for p, on in (("fp16", args.fp16), ("int8", args.int8)) if on] or ["fp32"]:
            print(build_engine(run_dir, precision=precision))


def _export_triton(args: argparse.Namespace) -> None:
    from cnndeploy.export.triton import TritonOptions, write_triton_repo

    options = TritonOptions(max_batch_size=args.max_batch_size,
                            preferred_batch_sizes=tuple(args.preferred_batch_sizes),
                            max_queue_delay_us=args.max_queue_delay_us, instance_kind=args.triton_instances,
                            instance_count=args.instance_count)
    for m in write_triton_repo(args.run_dirs, args.triton_repo, options=options):
        print(f"{args.triton_repo}/{m['model']}: {m['platform']}, max_batch_size {m['max_batch_size']}, "
              f"{m['instance_kind']} instances <- {m['file']}")


def _cmd_quant(args: argparse.Namespace) -> int:
    from cnndeploy.quant import QuantConfig, quantize_run

    cfg = QuantConfig(target=args.target, calib_size=args.calib_size, method=args.method, seed=args.seed,
                      reduce_range={"auto": None, "on": True, "off": False}[args.reduce_range])
    cfg.check()  # a bad option is reported before a bad RUN_DIR
    r = quantize_run(_one_run_dir(args.run_dir, "quant"), cfg, data_dir=args.data_dir)
    change = round(-r.accuracy_drop_points, 2) + 0.0  # INT8 minus FP32, as report.md; + 0.0: no "-0.00"
    print(f"{r.file}: test accuracy {100 * r.int8_accuracy:.2f}% ({change:+.2f} points vs FP32's "
          f"{100 * r.fp32_accuracy:.2f}%), {r.int8_bytes / 1e6:.2f} MB vs {r.fp32_bytes / 1e6:.2f} MB")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from cnndeploy.train.prune import PruneConfig, prune_run

    cfg = PruneConfig(amount=args.amount, method=args.method, finetune_epochs=args.finetune_epochs,
                      round_to=args.round_to or None, lr=args.lr, precision=args.precision, distill=args.distill)
    cfg.check()  # a bad option is reported before a bad RUN_DIR
    r = prune_run(_one_run_dir(args.run_dir, "prune"), cfg, out=args.out, data_dir=args.data_dir,
                  device=args.device, progress=not args.no_progress)
    b, p, f = r.before, r.pruned_before_finetune, r.after_finetune
    print(f"MACs {b['macs'] / 1e6:.2f}M -> {p['macs'] / 1e6:.2f}M ({r.macs_reduction:.2f}x fewer), "
          f"params {b['params'] / 1e6:.3f}M -> {p['params'] / 1e6:.3f}M; test accuracy "
          f"{100 * b['test_accuracy']:.2f}% -> {100 * p['test_accuracy']:.2f}% pruned -> "
          f"{100 * f['test_accuracy']:.2f}% after {r.finetune_epochs} fine-tune "
          f"epoch{'' if r.finetune_epochs == 1 else 's'}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from cnndeploy.artifacts.files import BENCH_DIR
    from cnndeploy.bench.harness import BenchConfig, default_batch_sizes, run_bench

    backends = [b for b in args.backends.split(",") if b]
    cfg = BenchConfig(backends=backends, batch_sizes=args.batch_sizes or default_batch_sizes(backends),
                      threads=args.threads, min_seconds=args.min_seconds)
    run_dirs = _run_dirs(args.run_dirs)
    out = args.out or str(Path(run_dirs[0]) / BENCH_DIR)
    rows = run_bench(run_dirs, cfg, out=out, data_dir=args.data_dir, progress=not args.no_progress)
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"{len(rows)} rows ({ok} measured, {len(rows) - ok} skipped or failed) -> {out}/bench.md")
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from cnndeploy.pipeline import pipeline_config, run_pipeline

    cfg = pipeline_config(dataset=args.dataset, models=[m for m in args.models.split(",") if m],
                         epochs=args.epochs, prune=args.prune, finetune_epochs=args.finetune_epochs,
                         distill=args.distill,
                         backends=[b for b in args.backends.split(",") if b], batch_sizes=args.batch_sizes,
                         threads=args.threads, min_seconds=args.min_seconds, device=args.device,
                         precision=args.precision, seed=args.seed, out=args.out, data_dir=args.data_dir,
                         max_drop=args.max_drop, time_budget=args.time_budget, holdout=args.holdout)
    report = run_pipeline(cfg, progress=not args.no_progress)
    print(f"report -> {report}")
    return 0


def optimize_config_from_args(args: argparse.Namespace):
    from cnndeploy.optimize import OptimizeConfig

    return OptimizeConfig(max_drop=args.max_drop, target=args.target, backends=args.backends,
                          batch_size=args.batch_size, time_budget=args.time_budget, amounts=args.amounts,
                          finetune_epochs=args.finetune_epochs, distill=args.distill, val_size=args.val_size,
                          val_seed=args.val_seed, calib_size=args.calib_size, max_fallback=args.max_fallback,
                          qat_epochs=args.qat_epochs, min_seconds=args.min_seconds, threads=args.threads,
                          reuse=args.reuse).check()


def _cmd_optimize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnndeploy.optimize import optimize_run

    cfg = optimize_config_from_args(args)  # a bad option is reported before a bad RUN_DIR
    run = _one_run_dir(args.run_dir, "optimize")
    out = Path(args.out) if args.out else Path(run).with_name(Path(run).name + "-optimized")
    r = optimize_run(run, cfg, out=out, data_dir=args.data_dir, progress=not args.no_progress)
    print(summary_of_optimize(r, out))
    return 0 if r.chosen else 1


def summary_of_optimize(r, out) -> str:
    chosen = next((c for c in r.candidates if c.name == r.chosen), None)
    lines = []
    if not r.finished:
        lines.append(f"the time budget ({r.time_budget_s:.0f} s) ended the search after {r.elapsed_s:.0f} s; "
                     f"the best candidate found so far is reported ({len(r.skipped)} step(s) not tried, "
                     "listed in optimize.md)")
    if chosen is None:
        lines.append(f"no candidate is within {r.max_drop:g} points on validation; see {out}/optimize.md")
    else:
        test = "" if chosen.test_accuracy is None else f", test {100 * chosen.test_accuracy:.2f}%"
        ref = r.reference.get("test_accuracy")
        speed = "" if chosen.speedup_vs_reference is None else f", {chosen.speedup_vs_reference:.2f}x FP32 PyTorch eager"
        lines.append(f"chose {chosen.name}: validation {chosen.val_drop_points:+.2f} points (budget {r.max_drop:g})"
                     f"{test}" + ("" if ref is None else f" vs {100 * ref:.2f}%") + f"{speed} at batch {r.batch_size}"
                     f" -> {out}/{r.best_file}")
    lines += [f"  why not: {line}" for line in r.why_lost[:5]]
    return "\n".join(lines)


def _cmd_serve(args: argparse.Namespace) -> int:
    from cnndeploy.serve.app import serve

    serve(_run_dirs(args.run_dirs), host=args.host, port=args.port, max_file_size=args.max_file_size,
          share=args.share, max_queue=args.max_queue, concurrency=args.concurrency)
    return 0


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "export": _cmd_export, "quant": _cmd_quant,
            "prune": _cmd_prune, "bench": _cmd_bench, "optimize": _cmd_optimize, "pipeline": _cmd_pipeline,
            "serve": _cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    from cnndeploy.errors import CnnDeployError

    try:
        return COMMANDS[args.command](args)
    except CnnDeployError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; the last complete epoch's checkpoint is kept (use --resume)" if args.command == "train" else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
