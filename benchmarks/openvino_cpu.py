"""OpenVINO beside onnxruntime and PyTorch on this CPU: FP32, BF16 compute and our own INT8 files.

    python benchmarks/openvino_cpu.py [--data-dir DIR] [--subset 5000] [--rounds 5] [--threads 2]
    python benchmarks/openvino_cpu.py --smoke --out /tmp/ov-smoke     # LeNet only, seconds

Prepares run directories for LeNet-5 on MNIST and AlexNet and ResNet-18 on CIFAR-10 (the JPEG
copy), each trained briefly (1 epoch on `--subset` images: speed does not depend on the weights,
so accuracies here are those of briefly trained models, not the models' best), exported with
`export --onnx` and quantized with `quant --target cpu`. Then runs `cnndeploy bench` once over
all of them with the backends torch, ort and openvino at batch 1 and 64, `--threads` for every
runtime, variants of one model interleaved round by round. Accuracy of every row is measured on
the whole test set through that runtime; the top-1 agreement of each fast row with onnxruntime
FP32 is measured here on the whole test set too.

Writes results/openvino-cpu.json and .md: every row, and the ratios issue 14 asks for, each
with its per-round values (paired by round) and their spread (max - min) / max:
- per model and batch size, the best row (any backend) over onnxruntime INT8 (`model.int8-cpu.onnx`);
- OpenVINO BF16 compute of `model.onnx` over OpenVINO FP32 (f32 hint) and over onnxruntime FP32;
- which row is fastest for LeNet-5 at batch 1, and by how much over the runner-up.
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

import numpy as np  # noqa: E402

from cnndeploy.artifacts.card import ModelCard  # noqa: E402
from cnndeploy.artifacts.records import read_bench  # noqa: E402
from cnndeploy.artifacts.variants import discover  # noqa: E402
from cnndeploy.bench.harness import BenchConfig, run_bench  # noqa: E402
from cnndeploy.data import dataset_for  # noqa: E402
from cnndeploy.data.types import normalise  # noqa: E402
from cnndeploy.export import export_onnx  # noqa: E402
from cnndeploy.quant import QuantConfig, quantize_run  # noqa: E402
from cnndeploy.runtime.runners import backend_variants, make_runner  # noqa: E402
from cnndeploy.train.fit import TrainConfig, train  # noqa: E402

MODELS = (("lenet5", "mnist"), ("alexnet", "cifar10"), ("resnet18", "cifar10"))
BACKENDS = ["torch", "ort", "openvino"]
BATCHES = [1, 64]
REFERENCE = ("fp32", "ort")       # what agreement and the FP32 ratios compare with
INT8_REF = ("int8-cpu", "ort")    # cnndeploy's fastest CPU row before OpenVINO
TARGETS = {"best_vs_ort_int8": 1.1, "bf16_vs_openvino_fp32": 1.7}   # ResNet-18, issue 14


def prepare(root: Path, model: str, dataset: str, data_dir: str, *, subset: int, calib: int) -> Path:
    run = root / f"{model}-{dataset}"
    if (run / "metrics.json").is_file() and (run / "model.int8-cpu.onnx").is_file():
        print(f"{run.name}: reusing the prepared run in {run}", flush=True)   # --keep from an earlier call
        return run
    t0 = time.perf_counter()
    train(TrainConfig(model=model, dataset=dataset, out=str(run), data_dir=data_dir, device="cpu", epochs=1,
                      subset=subset), progress=False)
    export_onnx(run, data_dir=data_dir)
    quantize_run(run, QuantConfig(target="cpu", calib_size=calib), data_dir=data_dir)
    print(f"{run.name}: trained, exported, quantized in {time.perf_counter() - t0:.0f} s", flush=True)
    return run


def predictions(backend: str, variant, ds, card, threads: int) -> np.ndarray:
    run = make_runner(backend, variant, threads=threads)
    out = [np.asarray(run(normalise(ds.test_x[i:i + 256], card.mean, card.std))).argmax(1)
           for i in range(0, len(ds.test_y), 256)]
    return np.concatenate(out)


def agreement(runs: list[Path], data_dir: str, threads: int) -> dict[str, dict[str, float]]:
    """Top-1 agreement with onnxruntime FP32 over the whole test set, per run, per (variant, backend)."""
    result = {}
    for run in runs:
        card = ModelCard.read(run)
        ds = dataset_for(card, data_dir=data_dir)
        onnx = [v for v in discover(run) if v.kind == "onnx"]
        ref = predictions("ort", next(v for v in onnx if v.precision == "fp32"), ds, card, threads)
        rows = {}
        for v in onnx:
            for backend in ("ort", "openvino"):
                for w in backend_variants(backend, v):
                    if (w.precision, backend) != REFERENCE:
                        rows[f"{w.precision}@{backend}"] = float((predictions(backend, w, ds, card, threads)
                                                                  == ref).mean())
        result[run.name] = rows
    return result


def _paired(a: dict, b: dict) -> dict:
    """a's throughput over b's, round by round (both rows of one family: the same interleaved rounds)."""
    ratios = [x / y for x, y in zip(a["round_throughputs"] or [], b["round_throughputs"] or []) if y]
    if not ratios:
        return {"ratio": a["throughput_ips"] / b["throughput_ips"], "rounds": []}
    return {"ratio": round(a["throughput_ips"] / b["throughput_ips"], 3), "median_of_rounds": round(statistics.median(ratios), 3),
            "min": round(min(ratios), 3), "max": round(max(ratios), 3),
            "spread": round((max(ratios) - min(ratios)) / max(ratios), 3), "rounds": [round(r, 3) for r in ratios]}


def ratios(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    at = {(r["run"], r["precision"], r["backend"], r["batch_size"]): r for r in ok}
    out: dict = {}
    for run in sorted({r["run"] for r in ok}):
        for b in sorted({r["batch_size"] for r in ok if r["run"] == run}):
            mine = sorted((r for r in ok if r["run"] == run and r["batch_size"] == b),
                          key=lambda r: -r["throughput_ips"])
            key = f"{run} batch {b}"
            entry: dict = {"fastest": f"{mine[0]['precision']}@{mine[0]['backend']}",
                           "fastest_p50_ms": mine[0]["latency_ms_p50"]}
            if len(mine) > 1:
                entry["fastest_over_runner_up"] = {"runner_up": f"{mine[1]['precision']}@{mine[1]['backend']}",
                                                   **_paired(mine[0], mine[1])}
            if (int8 := at.get((run, *INT8_REF, b))):
                entry["best_over_ort_int8"] = _paired(mine[0], int8)
            bf16 = at.get((run, "bf16", "openvino", b))
            for ref in (("fp32", "openvino"), REFERENCE):
                if bf16 and (fp32 := at.get((run, *ref, b))):
                    entry[f"bf16_over_{ref[0]}@{ref[1]}"] = _paired(bf16, fp32)
            out[key] = entry
    return out


def _versus_noise(p: dict, target: float) -> str:
    """The target's verdict, and whether the gain is larger than the run's own spread (else no difference)."""
    met = "met" if p["ratio"] >= target else "NOT met"
    spread = p.get("spread")
    if spread is None:
        return f"target {target}x: {met}"
    real = abs(p["ratio"] - 1) > spread
    return (f"target {target}x: {met}; spread {100 * spread:.0f}%, so "
            f"{'a real difference' if real else 'no difference measurable in this run'}")


def verdicts(found: dict) -> list[str]:
    lines = []
    for key, e in found.items():
        if key.startswith("resnet18"):
            best = e.get("best_over_ort_int8")
            if best:
                lines.append(f"{key}: best row ({e['fastest']}) is {best['ratio']:.2f}x onnxruntime INT8 "
                             f"({_versus_noise(best, TARGETS['best_vs_ort_int8'])})")
            bf16 = e.get("bf16_over_fp32@openvino")
            if bf16:
                lines.append(f"{key}: OpenVINO BF16 is {bf16['ratio']:.2f}x OpenVINO FP32 "
                             f"({_versus_noise(bf16, TARGETS['bf16_vs_openvino_fp32'])})")
        if key.startswith("lenet5") and key.endswith("batch 1"):
            ru = e.get("fastest_over_runner_up", {})
            lines.append(f"{key}: fastest is {e['fastest']} ({e['fastest_p50_ms']:.4f} ms p50), "
                         f"{ru.get('ratio', float('nan')):.2f}x the runner-up {ru.get('runner_up')}")
    return lines


def _spread_text(p: dict) -> str:
    return f"{p['ratio']:.2f}x" + (f" (rounds {p['min']:.2f}–{p['max']:.2f}, spread {100 * p['spread']:.0f}%)"
                                   if p.get("rounds") else "")


def markdown(result: dict, bench_md: str) -> str:
    lines = [f"# OpenVINO vs onnxruntime vs PyTorch on this CPU ({result['date']})", "",
             f"Command: `{result['command']}`. {result['note']}", "", "## Verdicts", ""]
    lines += [f"- {v}" for v in result["verdicts"]] + ["", "## Ratios (throughput over throughput, paired by round)", "",
                                                        "| model, batch | fastest | best / ort INT8 | bf16 / openvino FP32 | "
                                                        "bf16 / ort FP32 | fastest / runner-up |", "|---|---|---|---|---|---|"]
    for key, e in result["ratios"].items():
        cells = [_spread_text(e[k]) if k in e else "—" for k in ("best_over_ort_int8", "bf16_over_fp32@openvino",
                                                                 "bf16_over_fp32@ort", "fastest_over_runner_up")]
        lines.append(f"| {key} | {e['fastest']} | " + " | ".join(cells) + " |")
    lines += ["", "## Top-1 agreement with onnxruntime FP32 (whole test set)", "",
              "| run | " + " | ".join(sorted({k for a in result["agreement"].values() for k in a})) + " |"]
    cols = sorted({k for a in result["agreement"].values() for k in a})
    lines.append("|---|" + "---|" * len(cols))
    for run, a in result["agreement"].items():
        lines.append(f"| {run} | " + " | ".join(f"{100 * a[c]:.2f}%" if c in a else "—" for c in cols) + " |")
    body = bench_md.split("\n", 2)[2] if bench_md.startswith("# ") else bench_md
    return "\n".join(lines) + "\n\n## Every row (cnndeploy bench)\n\n" + body.split("![")[0].rstrip() + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("CNNDEPLOY_DATA", str(REPO.parent / "shared" / "datasets")))
    ap.add_argument("--subset", type=int, default=5000, help="training images per model (1 epoch)")
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=2.0, help="timing budget per row, over all rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "results"))
    ap.add_argument("--keep", help="keep the run directories and the bench folder here (default: a temp dir)")
    ap.add_argument("--smoke", action="store_true",
                    help="LeNet-5 only, on the shipped MNIST subset, 256 training images, short timing")
    args = ap.parse_args(argv)
    models = MODELS
    if args.smoke:
        models, args.subset, args.calib_size, args.rounds, args.min_seconds = MODELS[:1], 256, 32, 2, 0.05
        args.data_dir = str(REPO / "data" / "mnist-mini")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        runs = [prepare(root, m, d, args.data_dir, subset=args.subset, calib=args.calib_size) for m, d in models]
        cfg = BenchConfig(backends=BACKENDS, batch_sizes=BATCHES, threads=args.threads,
                          min_seconds=args.min_seconds, rounds=args.rounds)
        t0 = time.perf_counter()
        run_bench(runs, cfg, out=root / "bench", data_dir=args.data_dir, progress=False)
        bench_seconds = time.perf_counter() - t0
        bench = read_bench(root / "bench")
        bench_md = (root / "bench" / "bench.md").read_text()
        agree = agreement(runs, args.data_dir, args.threads)
    rows = [r.to_json() for r in bench["rows"]]
    found = ratios(rows)
    result = {"benchmark": "OpenVINO vs onnxruntime vs PyTorch, CPU", "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(["python", "benchmarks/openvino_cpu.py", *(argv if argv is not None else sys.argv[1:])]),
              "note": (f"Models trained 1 epoch on {args.subset} images each: accuracies are of briefly trained "
                       f"models (speed does not depend on the weights). {args.threads} threads for every runtime, "
                       f"{args.rounds} interleaved rounds, {args.min_seconds} s per row."),
              "smoke": args.smoke, "bench_seconds": round(bench_seconds, 1), "config": bench["config"],
              "environment": bench["environment"], "verdicts": verdicts(found), "ratios": found,
              "agreement": agree, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "openvino-cpu-smoke" if args.smoke else "openvino-cpu"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(result, bench_md))
    print("\n".join(result["verdicts"]))
    print(f"-> {out / name}.json, .md")
    return result


if __name__ == "__main__":
    main()
