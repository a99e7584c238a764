"""Accuracy cost of compression on a trained CIFAR-10 model, through the documented commands.

    python benchmarks/compression_accuracy.py [--model resnet20] [--epochs 6] [--data-dir DIR]

train -> export -> quant (cpu, tensorrt) -> prune 50% + fine-tune (20% of the epochs) ->
export -> quant (cpu). Every accuracy is measured on the whole CIFAR-10 test set (JPEG copy)
from the exact file. On 2 CPU cores ResNet-18 is slow to train, so ResNet-20 stands in
for quick accuracy figures (speed figures: benchmarks/compression_cpu.py).
Writes results/compression-accuracy-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> str:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "cnndeploy", "-q", *args], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    if out.returncode:
        raise SystemExit(f"cnndeploy {' '.join(args)} failed:\n{out.stderr}")
    print(f"[{time.perf_counter() - t0:6.1f}s] cnndeploy {' '.join(args)}\n{out.stdout.strip()}", flush=True)
    return out.stdout


def onnx_accuracy(path: Path, data_dir: str) -> float:
    return json.loads(cli("eval", str(path), "--data-dir", data_dir))["test_accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--amount", type=float, default=0.5)
    ap.add_argument("--precision", default="auto", help="train/fine-tune compute (bf16: CPUs with AVX512-BF16)")
    ap.add_argument("--data-dir", default=os.environ.get("CNNDEPLOY_DATA", str(REPO.parent / "shared/datasets")))
    ap.add_argument("--work", help="keep the run directories here (default: a temporary folder)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="compression-"))
    run, d = work / f"{args.model}-cifar10", args.data_dir
    t0 = time.perf_counter()
    cli("train", "--model", args.model, "--dataset", "cifar10", "--epochs", str(args.epochs), "--data-dir", d,
        "--out", str(run), "--no-progress", "--device", "cpu", "--precision", args.precision)
    cli("export", str(run), "--onnx", "--data-dir", d)
    for target in ("cpu", "tensorrt"):
        cli("quant", str(run), "--target", target, "--data-dir", d)
    cli("prune", str(run), "--amount", str(args.amount), "--data-dir", d, "--no-progress", "--device", "cpu")
    pruned = work / f"{run.name}-pruned{round(100 * args.amount)}"
    cli("export", str(pruned), "--onnx", "--data-dir", d)
    cli("quant", str(pruned), "--target", "cpu", "--data-dir", d)
    prune_report = json.loads((pruned / "prune.json").read_text())
    files = {"fp32": run / "model.onnx", "int8-cpu": run / "model.int8-cpu.onnx",
             "int8-trt": run / "model.int8-trt.onnx", "pruned fp32": pruned / "model.onnx",
             "pruned int8-cpu": pruned / "model.int8-cpu.onnx"}
    acc = {name: onnx_accuracy(path, d) for name, path in files.items()}
    base = acc["fp32"]
    result = {"model": args.model, "dataset": "cifar10 (JPEG copy)", "epochs": args.epochs,
              "precision": args.precision,
              "prune_amount": args.amount, "finetune_epochs": prune_report["finetune_epochs"],
              "accuracy": acc, "drop_points": {k: round(100 * (base - v), 2) for k, v in acc.items()},
              "size_bytes": {k: p.stat().st_size for k, p in files.items()},
              "macs": {"unpruned": prune_report["before"]["macs"], "pruned": prune_report["after_finetune"]["macs"]},
              "pruned_before_finetune_accuracy": prune_report["pruned_before_finetune"]["test_accuracy"],
              "wall_seconds": round(time.perf_counter() - t0, 1), "work_dir": str(work),
              "command": " ".join(["python", *sys.argv])}
    sys.path.insert(0, str(REPO / "benchmarks"))
    from cpu_train import machine

    result["machine"] = machine()
    out = REPO / "results" / f"compression-accuracy-{args.model}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
