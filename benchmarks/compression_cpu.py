"""ONNX Runtime CPU speed of FP32 vs INT8 vs pruned vs pruned+INT8, side by side in one run.

    python benchmarks/compression_cpu.py [--data-dir DIR] [--rounds 5]

ResNet-18 (CIFAR variant) and LeNet-5 here are *untrained*: this measures speed and size only
(weights do not change the work a convolution does). INT8 files are calibrated on real
training images so their activation ranges are realistic. Accuracy effects of compression
are measured by `cnndeploy quant` / `cnndeploy prune` on trained runs (see BENCHMARKS.md).
Writes results/compression-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cnndeploy.artifacts import files as layout  # noqa: E402
from cnndeploy.models import weights  # noqa: E402
from cnndeploy.data import load_dataset  # noqa: E402
from cnndeploy.export import export_onnx  # noqa: E402
from cnndeploy.models import create_model  # noqa: E402
from cnndeploy.quant.calibration import calibration_images  # noqa: E402
from cnndeploy.quant.ptq import quantize_file  # noqa: E402
from cnndeploy.train.prune import count, prune_model  # noqa: E402
from cpu_train import machine  # noqa: E402

THREADS = 2


def make_run(root: Path, name: str, dataset: str, data_dir: str, *, prune: float = 0.0) -> tuple[Path, dict]:
    ds = load_dataset(dataset, data_dir=data_dir)
    shape = (ds.channels, ds.height, ds.width)
    torch.manual_seed(0)
    model = create_model(name, ds.num_classes, *shape).eval()
    if prune:
        prune_model(model, shape, amount=prune, method="l2", round_to=8 if name != "lenet5" else None)
    run = root / f"{name}-{dataset}{'-pruned' if prune else ''}"
    run.mkdir(parents=True)
    weights.save_weights(run / layout.WEIGHTS, model)
    card = weights.card_for(name, model, ds.metadata())
    (run / layout.MODEL_JSON).write_text(json.dumps(card.to_json()))
    export_onnx(run, data_dir=data_dir)
    images = calibration_images(card, size=256, seed=0, ds=ds)
    quantize_file(run / "model.onnx", run / "model.int8-cpu.onnx", images, target="cpu", method="minmax")
    return run, {**count(model, shape), "shape": shape}


def ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_calls(fn, x, *, seconds: float = 1.5, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn(x)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("CNNDEPLOY_DATA", str(REPO.parent / "shared/datasets")))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "results"))
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    variants: dict[str, tuple[Path, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        r18, r18_info = make_run(root, "resnet18", "cifar10", args.data_dir)
        r18p, r18p_info = make_run(root, "resnet18", "cifar10", args.data_dir, prune=0.5)
        lenet, lenet_info = make_run(root, "lenet5", "mnist", args.data_dir)
        variants = {"resnet18 fp32": (r18 / "model.onnx", r18_info),
                    "resnet18 int8-cpu": (r18 / "model.int8-cpu.onnx", r18_info),
                    "resnet18 pruned50 fp32": (r18p / "model.onnx", r18p_info),
                    "resnet18 pruned50 int8-cpu": (r18p / "model.int8-cpu.onnx", r18p_info),
                    "lenet5 fp32": (lenet / "model.onnx", lenet_info),
                    "lenet5 int8-cpu": (lenet / "model.int8-cpu.onnx", lenet_info)}
        sessions = {k: ort_session(p) for k, (p, _) in variants.items()}
        torch_models = {"resnet18 torch-eager fp32": weights.load_run(r18)[0],
                        "lenet5 torch-eager fp32": weights.load_run(lenet)[0]}
        samples: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):  # interleave every variant in every round
            for batch in (1, 64):
                for name, sess in sessions.items():
                    shape = variants[name][1]["shape"]
                    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
                    inp = sess.get_inputs()[0].name
                    samples.setdefault((name, batch), []).extend(
                        time_calls(lambda a: sess.run(None, {inp: a}), x))
                for name, model in torch_models.items():
                    shape = (1, 28, 28) if name.startswith("lenet") else (3, 32, 32)
                    x = torch.randn(batch, *shape)
                    with torch.inference_mode():
                        samples.setdefault((name, batch), []).extend(time_calls(model, x))
        rows = []
        for (name, batch), ts in samples.items():
            med = statistics.median(ts)
            path, info = variants.get(name, (None, None))
            rows.append({"variant": name, "batch_size": batch, "latency_ms_p50": round(1000 * med, 3),
                         "latency_ms_p90": round(1000 * sorted(ts)[int(0.9 * len(ts))], 3),
                         "throughput_ips": round(batch / med, 1), "calls": len(ts),
                         "size_bytes": path.stat().st_size if path else None,
                         "macs": info["macs"] if info else None})
    base = {(r["variant"].split()[0], r["batch_size"]): r["throughput_ips"] for r in rows if r["variant"].endswith(" fp32")
            and "pruned" not in r["variant"] and "torch" not in r["variant"]}
    for r in rows:
        r["speedup_vs_fp32_onnx"] = round(r["throughput_ips"] / base[(r["variant"].split()[0], r["batch_size"])], 3)
    result = {"benchmark": "ONNX Runtime CPU compression speed", "threads": THREADS, "rounds": args.rounds,
              "rows": rows, "machine": machine(), "command": " ".join(["python", *sys.argv])}
    import onnxruntime

    result["machine"]["onnxruntime"] = onnxruntime.__version__
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "compression-cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    for r in sorted(rows, key=lambda r: (r["variant"].split()[0], r["batch_size"], r["variant"])):
        print(f"{r['variant']:28s} b{r['batch_size']:<3d} p50 {r['latency_ms_p50']:9.3f} ms  "
              f"{r['throughput_ips']:9.1f} img/s  x{r['speedup_vs_fp32_onnx']:.2f}  size {r['size_bytes']}")


if __name__ == "__main__":
    main()
