"""Accuracy cost of compression on a trained model, through the documented commands.

    python benchmarks/compression_accuracy.py --run runs/resnet18-cifar10 [--data-dir DIR]
    python benchmarks/compression_accuracy.py [--model resnet20] [--epochs 6]   # trains one first
    python benchmarks/compression_accuracy.py --smoke --data-dir DIR            # tiny, CPU, for the tests

On a (converged) run directory, in one call: export -> INT8 in both flavours (quant --target cpu
and --target tensorrt: QDQ ONNX files, both measured with onnxruntime) -> 50% prune + fine-tune
(prune's default of 20% of the original epochs), once plain and once with --distill (the original
run teaching) -> each pruned model exported and INT8 (cpu flavour). Every accuracy is measured on
the whole test set from the exact file (cnndeploy eval). The given run directory is copied into
the work folder first (without its checkpoint), so nothing in it is written.

Without --run a model is trained first (on 2 CPU cores ResNet-20 stands in for quick accuracy
figures; speed figures: benchmarks/compression_cpu.py). The issue's targets (ResNet-18 CIFAR-10:
INT8 cpu within 0.5 points, pruned within 1.0, pruned + INT8 within 1.5) are checked in the result.

Not covered yet: `cnndeploy optimize --max-drop 0.5` (the accuracy-budgeted search) has not
landed; it will be added here as one more row when it does.

Writes results/compression-accuracy-<model>[-<dataset> other than cifar10][-smoke].json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

# points of test accuracy a variant may lose against the fp32 ONNX model (issue 17)
TARGETS = {"int8-cpu": 0.5, "pruned": 1.0, "pruned int8-cpu": 1.5,
           "pruned-distill": 1.0, "pruned-distill int8-cpu": 1.5}


def cli(*args: str) -> str:
    """One `cnndeploy` command, in this process (no interpreter start per step); its stdout."""
    from cnndeploy.cli import main

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(["-q", *args])
    if code:
        raise SystemExit(f"cnndeploy {' '.join(args)} failed (exit {code}); its error is above")
    print(f"[{time.perf_counter() - t0:6.1f}s] cnndeploy {' '.join(args)}\n{out.getvalue().strip()}", flush=True)
    return out.getvalue()


def onnx_accuracy(path: Path, data_dir: str | None) -> float:
    return json.loads(cli("eval", str(path), "--json", *_data(data_dir)))["test_accuracy"]


def _data(data_dir: str | None) -> list[str]:
    return ["--data-dir", data_dir] if data_dir else []


def _copy_run(run: Path, work: Path) -> Path:
    """The run's files (not its checkpoint: neither needed nor small) in the work folder."""
    if not (run / "model.safetensors").is_file():
        raise SystemExit(f"--run {run}: no model.safetensors; expected a finished run directory")
    copy = work / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoint.safetensors", "*.engine"))
    return copy


def _train(args: argparse.Namespace, work: Path) -> Path:
    run = work / f"{args.model}-{args.dataset}"
    sizes = ["--epochs", "1", "--subset", "256", "--batch-size", "64"] if args.smoke else ["--epochs", str(args.epochs)]
    cli("train", "--model", args.model, "--dataset", args.dataset, *sizes, *_data(args.data_dir),
        "--out", str(run), "--no-progress", "--device", args.device, "--precision", args.precision)
    return run


def _prune(run: Path, args: argparse.Namespace, *, distill: bool) -> Path:
    out = run.with_name(f"{run.name}-pruned{round(100 * args.amount)}{'-distill' if distill else ''}")
    extra = ["--finetune-epochs", str(args.finetune_epochs)] if args.finetune_epochs else []
    cli("prune", str(run), "--amount", str(args.amount), "--out", str(out), *_data(args.data_dir), "--no-progress",
        "--device", args.device, *extra, *(["--distill"] if distill else []))
    cli("export", str(out), "--onnx", *_data(args.data_dir))
    cli("quant", str(out), "--target", "cpu", *args.quant, *_data(args.data_dir))
    return out


def measure(run: Path, args: argparse.Namespace) -> dict:
    d = args.data_dir
    cli("export", str(run), "--onnx", *_data(d))
    for target in ("cpu", "tensorrt"):
        cli("quant", str(run), "--target", target, *args.quant, *_data(d))
    pruned = {"pruned": _prune(run, args, distill=False), "pruned-distill": _prune(run, args, distill=True)}
    files = {"fp32": run / "model.onnx", "int8-cpu": run / "model.int8-cpu.onnx",
             "int8-trt": run / "model.int8-trt.onnx"}
    for name, p in pruned.items():
        files.update({name: p / "model.onnx", f"{name} int8-cpu": p / "model.int8-cpu.onnx"})
    acc = {name: onnx_accuracy(path, d) for name, path in files.items()}
    drop = {k: round(100 * (acc["fp32"] - v), 2) for k, v in acc.items()}
    reports = {name: json.loads((p / "prune.json").read_text()) for name, p in pruned.items()}
    trained = json.loads((run / "metrics.json").read_text())
    return {
        "model": trained["config"]["model"], "dataset": trained["config"]["dataset"],
        "dataset_source": trained["dataset_source"], "run_epochs": trained["epochs"],
        "run_test_accuracy_pytorch": trained["test_accuracy"], "prune_amount": args.amount,
        "finetune_epochs": {n: r["finetune_epochs"] for n, r in reports.items()},
        "accuracy": acc, "drop_points": drop,
        "targets_points": TARGETS, "targets_met": {k: drop[k] <= v for k, v in TARGETS.items()},
        "size_bytes": {k: p.stat().st_size for k, p in files.items()},
        "macs": {"unpruned": reports["pruned"]["before"]["macs"],
                 **{n: r["after_finetune"]["macs"] for n, r in reports.items()}},
        "pruned_before_finetune_accuracy": {n: r["pruned_before_finetune"]["test_accuracy"]
                                            for n, r in reports.items()},
    }


def _markdown(result: dict) -> str:
    lines = [f"# Compression accuracy: {result['model']} on {result['dataset']}", "",
             f"{result['date']}, commit {result['commit']}, command `{result['command']}`; run trained "
             f"{result['run_epochs']} epochs ({100 * result['run_test_accuracy_pytorch']:.2f}% in PyTorch). "
             "Accuracy on the whole test set from each file (onnxruntime, CPU).", "",
             "| variant | test accuracy | drop (points) | target | met | size (bytes) |", "|---|---|---|---|---|---|"]
    for k, v in result["accuracy"].items():
        target = result["targets_points"].get(k)
        met = "" if target is None else ("yes" if result["targets_met"][k] else "NO")
        lines.append(f"| {k} | {100 * v:.2f}% | {result['drop_points'][k]:.2f} | "
                     f"{'-' if target is None else f'<= {target}'} | {met} | {result['size_bytes'][k]:,} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a finished (converged) run directory to compress (default: train one first)")
    ap.add_argument("--model", default="resnet20", help="without --run: the model to train")
    ap.add_argument("--dataset", default="cifar10", help="without --run: the dataset to train on")
    ap.add_argument("--epochs", type=int, default=6, help="without --run: epochs to train")
    ap.add_argument("--amount", type=float, default=0.5)
    ap.add_argument("--finetune-epochs", type=int, help="default: prune's (20%% of the run's epochs)")
    ap.add_argument("--calib-size", type=int, help="images quant calibrates on (default: quant's)")
    ap.add_argument("--device", default="cpu", help="train and fine-tune device")
    ap.add_argument("--precision", default="auto", help="without --run: train compute (bf16: CPUs with AVX512-BF16)")
    ap.add_argument("--data-dir", default=os.environ.get("CNNDEPLOY_DATA", str(REPO.parent / "shared/datasets")))
    ap.add_argument("--work", help="keep the run directories here (default: a temporary folder)")
    ap.add_argument("--out", default=str(REPO / "results"), help="folder for the result files")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny CPU settings (LeNet-5 on MNIST, 1 epoch on 256 images, 1 fine-tune epoch, "
                         "64 calibration images): checks the script, not accuracy")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.dataset, args.device = "lenet5", "mnist", "cpu"
        args.finetune_epochs, args.calib_size = args.finetune_epochs or 1, args.calib_size or 64
    args.quant = ["--calib-size", str(args.calib_size)] if args.calib_size else []
    work = Path(args.work or tempfile.mkdtemp(prefix="compression-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run = _copy_run(Path(args.run), work) if args.run else _train(args, work)
    result = measure(run, args)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from cpu_train import machine
    from reproduce_table1 import _commit

    from datetime import datetime, timezone
    result.update(wall_seconds=round(time.perf_counter() - t0, 1), work_dir=str(work), machine=machine(),
                  commit=_commit(), date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  command=" ".join(["python", *sys.argv]))
    dataset = Path(str(result["dataset"])).name
    name = (f"compression-accuracy-{result['model']}" + ("" if dataset == "cifar10" else f"-{dataset}")
            + ("-smoke" if args.smoke else ""))  # CIFAR-10 keeps the earlier results' names
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(_markdown(result))
    print(json.dumps({k: result[k] for k in ("accuracy", "drop_points", "targets_met")}, indent=2))


if __name__ == "__main__":
    main()
