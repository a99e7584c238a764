"""Thin command line: parse, then import the library function only when its command runs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from cnndeploy import __version__

MODELS = ("lenet5", "alexnet", "resnet18", "resnet20", "resnet56")  # checked against the registry in tests
PRECISIONS = ("auto", "fp32", "bf16")  # train/loop.py's, without importing torch here
PRECISION_HELP = ("training compute; auto: bf16 on CUDA, fp32 on CPU (bf16 there pays on CPUs with "
                  "AVX512-BF16/AMX); evaluation is always fp32")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _fraction(low: float, high: float, closed_high: bool):
    def parse(text: str) -> float:
        value = float(text)
        if not (low <= value and (value <= high if closed_high else value < high)):
            raise argparse.ArgumentTypeError(
                f"expected a number in [{low}, {high}{']' if closed_high else ')'}, got {text}")
        return value
    return parse


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model into a run directory",
                       description="Train a model; unset hyper-parameters come from the model's "
                                   "recipe for the dataset (see README).")
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--dataset", required=True, help="mnist, cifar10, or a path to an image folder/archive")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--lr", type=_positive_float, help="peak learning rate")
    p.add_argument("--weight-decay", type=_fraction(0.0, 1.0, True))
    p.add_argument("--label-smoothing", type=_fraction(0.0, 1.0, False))
    p.add_argument("--warmup", type=_fraction(0.0, 1.0, True), help="fraction of steps spent warming up")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--subset", type=_positive_int, help="train on a fixed random subset of N images")
    p.add_argument("--data-dir")
    p.add_argument("--download", action="store_true", help="fetch MNIST/CIFAR-10 if missing")
    p.add_argument("--out", help="run directory (default runs/<model>-<dataset>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs: BatchNorm statistics over the whole global batch")
    p.add_argument("--no-progress", action="store_true")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="re-measure test accuracy of a run directory, ONNX file or TensorRT engine")
    p.add_argument("run_dir", metavar="RUN_DIR|MODEL.onnx|MODEL.engine")
    p.add_argument("--dataset", help="override the dataset recorded in model.json")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run directory to ONNX (validated against PyTorch), "
                                      "TensorRT, or a Triton model repository")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--onnx", action="store_true", help="write RUN_DIR/model.onnx")
    p.add_argument("--trt", action="store_true", help="build a TensorRT engine (needs tensorrt and a GPU)")
    p.add_argument("--fp16", action="store_true", help="with --trt: an fp16 engine")
    p.add_argument("--int8", action="store_true",
                   help="with --trt: an int8 engine from model.int8-trt.onnx (cnndeploy quant --target tensorrt)")
    p.add_argument("--with-preprocess", action="store_true",
                   help="also write model.uint8.onnx taking uint8 NHWC pixels (normalisation inside)")
    p.add_argument("--opset", type=int, default=20, help="ONNX opset (17 or newer)")
    p.add_argument("--out", help="ONNX path (default RUN_DIR/model.onnx; one RUN_DIR only)")
    p.add_argument("--data-dir", help="where the test images used for validation are")
    t = p.add_argument_group("Triton Inference Server", "a model repository with one model per ONNX file "
                             "and engine of each RUN_DIR (needs tritonclient: pip install 'cnndeploy[triton]')")
    t.add_argument("--triton-repo", metavar="DIR", help="write (or add to) the model repository DIR")
    t.add_argument("--max-batch-size", type=_positive_int, default=256, help="Triton's max_batch_size")
    t.add_argument("--preferred-batch-sizes", type=_int_list, default=[32, 128],
                   help="dynamic batching's preferred batch sizes")
    t.add_argument("--max-queue-delay-us", type=int, default=100,
                   help="how long Triton may wait to fill a preferred batch (microseconds)")
    t.add_argument("--triton-instances", choices=("cpu", "gpu"), default="cpu",
                   help="instance kind of the onnxruntime models (TensorRT plans always run on GPU)")
    t.add_argument("--instance-count", type=_positive_int, default=1, help="model instances (per GPU for gpu)")


def _add_quant(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quant", help="INT8 post-training quantization of RUN_DIR/model.onnx",
                       description="Static INT8 quantization (QDQ, per-channel weights) calibrated on "
                                   "training images; the result is evaluated on the whole test set.")
    p.add_argument("run_dir")
    p.add_argument("--target", default="cpu", choices=("cpu", "tensorrt"),
                   help="cpu: uint8 activations (x86 VNNI); tensorrt: symmetric int8, zero point 0")
    p.add_argument("--calib-size", type=_positive_int, default=512)
    p.add_argument("--method", default="minmax", choices=("minmax", "entropy", "percentile"))
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration subset")
    p.add_argument("--data-dir")


def _add_prune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="structured channel pruning (Torch-Pruning) + fine-tune",
                       description="Remove a fraction of the channels of every prunable layer group, "
                                   "then fine-tune; writes a new run directory.")
    p.add_argument("run_dir")
    p.add_argument("--amount", type=float, required=True, help="fraction of channels to remove, in (0, 1)")
    p.add_argument("--method", default="l2", choices=("l1", "l2", "taylor"))
    p.add_argument("--finetune-epochs", type=int, help="default: 20%% of the original run's epochs, rounded down, at least 1")
    p.add_argument("--lr", type=_positive_float, help="fine-tune peak lr (default: a quarter of the original)")
    p.add_argument("--round-to", type=int, default=8, help="keep channel counts multiples of this (0: off)")
    p.add_argument("--out", help="default: RUN_DIR-pruned<percent>")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", choices=PRECISIONS, help="fine-tune compute (default: the original run's)")
    p.add_argument("--distill", action="store_true",
                   help="fine-tune against the unpruned model's outputs (knowledge distillation, "
                        "T=4, weight 0.9); each step then also runs the unpruned model forward")
    p.add_argument("--no-progress", action="store_true")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="accuracy, latency and size of every variant on every backend")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--backends", default="torch,ort",
                   help="comma list of torch,torch-compile,ort,ort-cuda,ort-trt,tensorrt")
    p.add_argument("--batch-sizes", type=_int_list, default=[1, 32, 256])
    p.add_argument("--threads", type=_positive_int, help="intra-op threads for torch and onnxruntime")
    p.add_argument("--min-seconds", type=float, default=1.0, help="timing budget per row")
    p.add_argument("--out", default="bench")
    p.add_argument("--data-dir")
    p.add_argument("--no-progress", action="store_true")


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
    p = sub.add_parser("pipeline", help="train -> prune -> export -> quant -> TensorRT -> bench -> report.md",
                       description="One command from nothing to report.md. Each stage is skipped when its "
                                   "outputs exist and are complete, so an interrupted pipeline resumes.")
    p.add_argument("--dataset", required=True, help="mnist, cifar10, or a path to an image folder/archive")
    p.add_argument("--models", default="lenet5,alexnet,resnet18", help="comma list of models")
    p.add_argument("--epochs", help="N for every model, or per model: lenet5=6,resnet18=2 (default: recipes)")
    p.add_argument("--prune", type=float, default=0.5, help="fraction of channels to prune (0: skip pruning)")
    p.add_argument("--finetune-epochs", type=int, help="default: 20%% of each model's epochs, rounded down, at least 1")
    p.add_argument("--distill", action="store_true", help="fine-tune pruned models against the unpruned ones (KD)")
    p.add_argument("--backends", default="torch,ort,ort-cuda,tensorrt",
                   help="bench backends; absent ones appear as skipped rows")
    p.add_argument("--batch-sizes", type=_int_list, default=[1, 32, 256])
    p.add_argument("--threads", type=_positive_int, help="intra-op threads for torch and onnxruntime")
    p.add_argument("--min-seconds", type=float, default=1.0, help="timing budget per bench row")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="pipeline", help="folder for the run directories, bench and report.md")
    p.add_argument("--data-dir")
    p.add_argument("--no-progress", action="store_true")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="Gradio demo: every variant of the run directories answers the same image")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes the demo to the network: an explicit choice")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-file-size", type=_size, default=5_000_000, help="largest upload, e.g. 5MB")
    p.add_argument("--share", action="store_true", help="ask Gradio for a public share link")
    p.add_argument("--max-queue", type=_positive_int, default=64, help="requests waiting at most")
    p.add_argument("--concurrency", type=_positive_int, default=4, help="requests served at once")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnndeploy", description=__doc__, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"cnndeploy {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of expected errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=lambda **kw: argparse.ArgumentParser(allow_abbrev=False, **kw))
    _add_train(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_quant(sub)
    _add_prune(sub)
    _add_bench(sub)
    _add_pipeline(sub)
    _add_serve(sub)
    return parser


def _cmd_train(args: argparse.Namespace, explicit: set[str]) -> int:
    from pathlib import Path

    from cnndeploy.train.distributed import PeerError, env_rank
    from cnndeploy.train.fit import TrainConfig, train

    dataset_tag = Path(args.dataset).name.split(".")[0] or "data"
    cfg = TrainConfig(model=args.model, dataset=args.dataset, out=args.out or f"runs/{args.model}-{dataset_tag}",
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                      warmup=args.warmup, seed=args.seed, device=args.device, compile=args.compile,
                      data_dir=args.data_dir, download=args.download, subset=args.subset,
                      sync_bn=args.sync_bn, precision=args.precision)
    try:
        metrics = train(cfg, resume=args.resume, explicit=explicit, progress=not args.no_progress)
    except PeerError:
        return 2  # a torchrun worker whose rank 0 failed: rank 0 has printed why
    if env_rank() != 0:
        return 0  # under torchrun, rank 0 reports for all
    print(f"test accuracy {100 * metrics['test_accuracy']:.2f}% after {metrics['epochs']} epochs "
          f"({metrics['wall_seconds']:.1f}s) -> {cfg.out}")
    return 0


def _cmd_eval(args: argparse.Namespace, explicit: set[str]) -> int:
    from cnndeploy.runtime.evaluate import evaluate_path

    result = evaluate_path(args.run_dir, dataset=args.dataset, data_dir=args.data_dir, device=args.device)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_export(args: argparse.Namespace, explicit: set[str]) -> int:
    from cnndeploy.errors import CnnDeployError

    if not (args.onnx or args.trt or args.triton_repo):
        raise CnnDeployError("nothing to export: pass --onnx, --trt and/or --triton-repo DIR")
    if (args.fp16 or args.int8) and not args.trt:
        raise CnnDeployError("--fp16/--int8 choose the TensorRT engine's precision: add --trt")
    if args.out and len(args.run_dirs) > 1:
        raise CnnDeployError("--out names one ONNX file: give one RUN_DIR with it")
    if args.triton_repo:
        from cnndeploy.export.triton import require_model_config

        require_model_config()  # fail before the slow exports if the repository cannot be checked
    if args.trt:
        from cnndeploy.export.tensorrt import require_tensorrt

        require_tensorrt()  # fail before the ONNX export if the engine cannot be built anyway
    for run_dir in args.run_dirs:
        _export_one(args, run_dir)
    if args.triton_repo:
        _export_triton(args)
    return 0


def _export_one(args: argparse.Namespace, run_dir: str) -> None:
    if args.onnx:
        from cnndeploy.export import export_onnx

        path, report = export_onnx(run_dir, out=args.out, opset=args.opset, data_dir=args.data_dir,
                                   with_preprocess=args.with_preprocess)
        print(f"{path}: max |logit diff| {report['max_abs_diff']:.2e} vs PyTorch, "
              f"top-1 agreement {100 * report['top1_agreement']:.1f}% at batch sizes {report['batches']}")
    if args.trt:
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


def _cmd_quant(args: argparse.Namespace, explicit: set[str]) -> int:
    from cnndeploy.quant import QuantConfig, quantize_run

    cfg = QuantConfig(target=args.target, calib_size=args.calib_size, method=args.method, seed=args.seed)
    r = quantize_run(args.run_dir, cfg, data_dir=args.data_dir)
    print(f"{r.file}: test accuracy {100 * r.int8_accuracy:.2f}% vs {100 * r.fp32_accuracy:.2f}% "
          f"FP32 (drop {r.accuracy_drop_points:+.2f} points), {r.int8_bytes / 1e6:.2f} MB vs "
          f"{r.fp32_bytes / 1e6:.2f} MB")
    return 0


def _cmd_prune(args: argparse.Namespace, explicit: set[str]) -> int:
    from cnndeploy.train.prune import PruneConfig, prune_run

    cfg = PruneConfig(amount=args.amount, method=args.method, finetune_epochs=args.finetune_epochs,
                      round_to=args.round_to or None, lr=args.lr, precision=args.precision, distill=args.distill)
    r = prune_run(args.run_dir, cfg, out=args.out, data_dir=args.data_dir, device=args.device,
                  progress=not args.no_progress)
    b, p, f = r.before, r.pruned_before_finetune, r.after_finetune
    print(f"MACs {b['macs'] / 1e6:.2f}M -> {p['macs'] / 1e6:.2f}M ({r.macs_reduction:.2f}x fewer), "
          f"params {b['params'] / 1e6:.3f}M -> {p['params'] / 1e6:.3f}M; test accuracy "
          f"{100 * b['test_accuracy']:.2f}% -> {100 * p['test_accuracy']:.2f}% pruned -> "
          f"{100 * f['test_accuracy']:.2f}% after {r.finetune_epochs} fine-tune epochs")
    return 0


def _cmd_bench(args: argparse.Namespace, explicit: set[str]) -> int:
    from cnndeploy.bench.harness import BenchConfig, run_bench

    cfg = BenchConfig(backends=[b for b in args.backends.split(",") if b], batch_sizes=args.batch_sizes,
                      threads=args.threads, min_seconds=args.min_seconds)
    rows = run_bench(args.run_dirs, cfg, out=args.out, data_dir=args.data_dir, progress=not args.no_progress)
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"{len(rows)} rows ({ok} measured, {len(rows) - ok} skipped or failed) -> {args.out}/bench.md")
    return 0


def _cmd_pipeline(args: argparse.Namespace, explicit: set[str]) -> int:
    from cnndeploy.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(dataset=args.dataset, models=[m for m in args.models.split(",") if m],
                         epochs=args.epochs, prune=args.prune, finetune_epochs=args.finetune_epochs,
                         distill=args.distill,
                         backends=[b for b in args.backends.split(",") if b], batch_sizes=args.batch_sizes,
                         threads=args.threads, min_seconds=args.min_seconds, device=args.device,
                         precision=args.precision, seed=args.seed, out=args.out, data_dir=args.data_dir)
    report = run_pipeline(cfg, progress=not args.no_progress)
    print(f"report -> {report}")
    return 0


def _cmd_serve(args: argparse.Namespace, explicit: set[str]) -> int:
    from cnndeploy.serve.app import serve

    serve(args.run_dirs, host=args.host, port=args.port, max_file_size=args.max_file_size, share=args.share,
          max_queue=args.max_queue, concurrency=args.concurrency)
    return 0


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "export": _cmd_export, "quant": _cmd_quant,
            "prune": _cmd_prune, "bench": _cmd_bench, "pipeline": _cmd_pipeline, "serve": _cmd_serve}


def _explicit_options(argv: Sequence[str]) -> set[str]:
    """Names of the options the user typed (so --resume can tell them from defaults)."""
    typed = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return {a.lstrip("-").replace("-", "_") for a in typed}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    from cnndeploy.errors import CnnDeployError

    try:
        return COMMANDS[args.command](args, _explicit_options(argv))
    except CnnDeployError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; the last complete epoch's checkpoint is kept (use --resume)" if args.command == "train" else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
