"""FP16 vs FP32 ONNX on onnxruntime's CPU provider, interleaved, for the file `export --fp16-onnx` writes.

    python benchmarks/fp16_onnx_cpu.py [--model resnet18] [--rounds 5] [--threads 2] [--data-dir data/mnist-mini]

An untrained network (speed does not depend on the weights' values) for 1x28x28 MNIST images is
exported twice by `export_onnx(fp16=True)`: model.onnx and model.fp16.onnx. Each round times both
files back to back (p50 latency at batch 1, throughput at batch 64); the ratio per round and its
spread over the rounds are reported. Writes results/fp16-onnx-cpu-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cnndeploy.bench import environment, measure  # noqa: E402
from cnndeploy.export import export_onnx  # noqa: E402
from cnndeploy.models import create_model, weights  # noqa: E402
from cnndeploy.runtime.runners import ort_session  # noqa: E402

MNIST = {"dataset": "mnist", "dataset_source": "mnist-idx", "classes": [str(i) for i in range(10)],
         "channels": 1, "height": 28, "width": 28, "mean": [0.1307], "std": [0.3081]}


def make_run(root: Path, model_name: str) -> Path:
    torch.manual_seed(0)
    model = create_model(model_name, 10, 1, 28, 28)
    run = root / model_name
    run.mkdir()
    weights.save_weights(run / "model.safetensors", model)
    (run / "model.json").write_text(json.dumps(weights.card_for(model_name, model, MNIST).to_json()))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--data-dir", default=str(REPO / "data" / "mnist-mini"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp), args.model)
        _, report = export_onnx(run, data_dir=args.data_dir, fp16=True)
        files = {"fp32": run / "model.onnx", "fp16": run / "model.fp16.onnx"}
        sessions = {k: ort_session(p, threads=args.threads) for k, p in files.items()}
        sizes = {k: p.stat().st_size for k, p in files.items()}
        x1, x64 = (np.random.default_rng(0).standard_normal((b, 1, 28, 28)).astype(np.float32) for b in (1, 64))
        rounds = []
        for _ in range(args.rounds):
            row = {}
            for k, s in sessions.items():
                p50 = measure(lambda: s.run(None, {"input": x1}), warmup=20, min_seconds=args.min_seconds).p50_ms
                thr = measure(lambda: s.run(None, {"input": x64}), warmup=3, min_seconds=args.min_seconds)
                row[k] = {"p50_ms_batch1": p50, "images_per_s_batch64": thr.throughput(64)}
            rounds.append(row)
    lat = [r["fp32"]["p50_ms_batch1"] / r["fp16"]["p50_ms_batch1"] for r in rounds]
    thr = [r["fp16"]["images_per_s_batch64"] / r["fp32"]["images_per_s_batch64"] for r in rounds]
    result = {"command": " ".join(["python", *sys.argv]), "model": args.model, "threads": args.threads,
              "environment": environment(args.threads), "sizes_bytes": sizes,
              "fp16_validation": report["fp16"], "rounds": rounds,
              "fp16_speedup_batch1_p50": {"median": statistics.median(lat), "min": min(lat), "max": max(lat)},
              "fp16_speedup_batch64_throughput": {"median": statistics.median(thr), "min": min(thr), "max": max(thr)}}
    out = REPO / "results" / f"fp16-onnx-cpu-{args.model}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("sizes_bytes", "fp16_speedup_batch1_p50",
                                             "fp16_speedup_batch64_throughput")}, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
