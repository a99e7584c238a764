"""Every variant of LeNet-5/MNIST and ResNet-18/CIFAR-10 on the GPU, in one prepared device call.

    python benchmarks/gpu_bench.py [--data-dir DIR] [--max-seconds 420]          # on a CUDA machine
    python benchmarks/gpu_bench.py --runs RUN_DIR [RUN_DIR ...]                   # bench these as they are
    python benchmarks/gpu_bench.py --smoke --out /tmp/gpu-smoke                   # CPU, LeNet only, seconds

Prepares, per model, a run directory trained briefly (`--epochs` on `--subset` images: speed does
not depend on the weights, so accuracies are those of briefly trained models), exported to ONNX
and FP16 ONNX, quantized (`quant --target cpu`, whose Q/DQ nodes onnxruntime's CUDA provider runs
in floating point) and pruned 50% with a one-epoch fine-tune. Then runs `cnndeploy bench` once
over all of them with the CUDA backends (torch in FP32/FP16/BF16, torch-compile, ort-cuda) at
batch 1, 64 and 1024, and writes results/gpu-bench-<gpu>.json and .md (plus the bench's plots
under results/gpu-bench-<gpu>/). Prints a short table last.

`--max-seconds` keeps the whole script inside one device call: a model whose preparation would
start past 40% of the budget is left out, and the bench's per-row timing budget is sized from
what is left; torch-compile is dropped where its estimated compiling (per model, per batch size)
would take more than half of what is left. Whatever is left out is named in the output.

`--smoke` runs the same code on CPU with tiny settings and the CPU backends (torch, ort), so
that the GPU call is not the script's first run (tests/test_gpu_bench.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cnndeploy.artifacts.records import read_bench  # noqa: E402
from cnndeploy.bench.harness import BenchConfig, run_bench  # noqa: E402
from cnndeploy.export import export_onnx  # noqa: E402
from cnndeploy.quant import QuantConfig, quantize_run  # noqa: E402
from cnndeploy.train.fit import TrainConfig, train  # noqa: E402
from cnndeploy.train.prune import PruneConfig, prune_run  # noqa: E402

MODELS = (("lenet5", "mnist"), ("resnet18", "cifar10"))
GPU_BACKENDS = ["torch", "torch-compile", "ort-cuda"]
CPU_BACKENDS = ["torch", "ort"]
GPU_BATCHES = [1, 64, 1024]
PREPARE_SHARE = 0.4   # of --max-seconds: no model starts preparing after this
# guesses, not measurements: torch.compile + CUDA-graph capture per run and batch size, by model
COMPILE_SECONDS = {"lenet5": 5.0, "resnet18": 20.0}
VARIANTS_PER_RUN = 4  # model.safetensors or model.onnx, fp16, int8-cpu (+ torch's fp16/bf16 rows): the budget's divisor


def prepare(root: Path, model: str, dataset: str, data_dir: str, *, device: str, subset: int, epochs: int,
            calib: int) -> list[Path]:
    """The run directory of `model` and its 50%-pruned copy, each exported (FP32 + FP16) and quantized."""
    run = root / f"{model}-{dataset}"
    t0 = time.perf_counter()
    train(TrainConfig(model=model, dataset=dataset, out=str(run), data_dir=data_dir, device=device, epochs=epochs,
                      subset=subset), progress=False)
    pruned = _prune(run, data_dir, device)
    for r in (run, pruned):
        export_onnx(r, data_dir=data_dir)
        export_onnx(r, data_dir=data_dir, fp16=True)
        quantize_run(r, QuantConfig(target="cpu", calib_size=calib), data_dir=data_dir)
    print(f"{run.name}: trained, pruned, exported, quantized in {time.perf_counter() - t0:.0f} s", flush=True)
    return [run, pruned]


def _prune(run: Path, data_dir: str, device: str) -> Path:
    out = run.with_name(run.name + "-pruned50")
    prune_run(run, PruneConfig(amount=0.5, finetune_epochs=1), out=str(out), data_dir=data_dir, device=device,
              progress=False)
    return out


def compile_guard(backends: list[str], runs: list[str], batches: list[int], left: float) -> tuple[list[str], str | None]:
    """The backends without torch-compile, and why, where its estimated compiling would take more
    than half of the `left` seconds; else the backends unchanged and None."""
    compiles = len(batches) * sum(COMPILE_SECONDS.get(r.split("-")[0], 20.0) for r in runs)
    if "torch-compile" not in backends or compiles <= 0.5 * left:
        return backends, None
    return [b for b in backends if b != "torch-compile"], (
        f"torch-compile: an estimated {compiles:.0f} s of compiling ({len(runs)} runs x {len(batches)} batch "
        f"sizes) would pass half of the {max(0.0, left):.0f} s left")


def gpu_slug(env: dict) -> str:
    """A file-name-safe GPU name ("NVIDIA H200" -> "nvidia-h200"); "cpu" without one."""
    name = (env.get("gpu") or {}).get("name") or "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def table(rows: list[dict]) -> list[str]:
    """The short table printed last: the fastest ok row per run and batch size."""
    ok = [r for r in rows if r["status"] == "ok"]
    lines = [f"{'run':<28} {'batch':>5}  {'fastest row':<28} {'p50 ms':>9} {'images/s':>11} {'peak %':>7}"]
    for run in sorted({r["run"] for r in ok}):
        for b in sorted({r["batch_size"] for r in ok if r["run"] == run}):
            best = max((r for r in ok if r["run"] == run and r["batch_size"] == b), key=lambda r: r["throughput_ips"])
            share = "—" if best.get("peak_share") is None else f"{100 * best['peak_share']:.2f}"
            lines.append(f"{run:<28} {b:>5}  {best['precision'] + '@' + best['backend']:<28} "
                         f"{best['latency_ms_p50']:>9.4f} {best['throughput_ips']:>11.0f} {share:>7}")
    return lines


def _best(rows: list[dict], run: str, batch: int, **match) -> dict | None:
    mine = [r for r in rows if r["status"] == "ok" and r["run"] == run and r["batch_size"] == batch
            and all(r.get(k) == v for k, v in match.items())]
    return max(mine, key=lambda r: r["throughput_ips"]) if mine else None


def verdicts(rows: list[dict]) -> list[str]:
    """Issue 16's targets, each met / NOT met with its numbers, or why it could not be judged."""
    out = []
    res, pruned = "resnet18-cifar10", "resnet18-cifar10-pruned50"
    big, one = _best(rows, res, 1024), _best(rows, res, 1)
    if big:
        out.append(f"ResNet-18 batch 1024: best {big['precision']}@{big['backend']} {big['throughput_ips']:.0f} "
                   f"images/s (target 100000: {'met' if big['throughput_ips'] >= 1e5 else 'NOT met'})")
    if one:
        out.append(f"ResNet-18 batch 1: best {one['precision']}@{one['backend']} p50 {one['latency_ms_p50']:.4f} ms "
                   f"(target 0.25 ms: {'met' if one['latency_ms_p50'] <= 0.25 else 'NOT met'})")
    comp, eager = (_best(rows, res, 1, backend=b, precision="fp32") for b in ("torch-compile", "torch"))
    if comp and eager:
        ratio = comp["throughput_ips"] / eager["throughput_ips"]
        out.append(f"ResNet-18 batch 1: torch-compile ({comp.get('compile_mode')}) is {ratio:.2f}x torch eager FP32 "
                   f"(target 3x: {'met' if ratio >= 3 else 'NOT met'})")
    for precision in ("fp32", "fp16", "bf16"):
        a, b = (_best(rows, r, 1024, backend="torch", precision=precision) for r in (pruned, res))
        if a and b:
            ratio = a["throughput_ips"] / b["throughput_ips"]
            out.append(f"ResNet-18 50% pruned / unpruned, torch {precision}, batch 1024: {ratio:.2f}x (target 2x: "
                       + ("met)" if ratio >= 2 else "NOT met: its narrower layers fill less of the GPU)"))
    lenet = _best(rows, "lenet5-mnist", 1024)
    if lenet:
        out.append(f"LeNet-5 batch 1024: fastest {lenet['precision']}@{lenet['backend']} "
                   f"{lenet['throughput_ips']:.0f} images/s")
    return out or ["no row of the targets' runs was measured"]


def empty_model_overhead(cuda: bool, seconds: float = 0.5) -> dict:
    """p50 of the bench's timed call around a model that does nothing (nn.Identity on a device
    tensor, synchronised as GPU rows are): below this, a small model's latency is the harness's."""
    import torch

    from cnndeploy.bench.timing import measure
    from cnndeploy.runtime.runners import TorchCudaRunner, torch_model_runner

    x = torch.zeros(1, 1, 28, 28).numpy()
    if cuda:
        run = TorchCudaRunner(torch.nn.Identity())
        handle = run.to_device(x)
        stats = measure(lambda: run.run_on_device(handle), min_seconds=seconds, sync=torch.cuda.synchronize)
        timed = "device-resident, synchronised"
    else:
        run = torch_model_runner(torch.nn.Identity())
        stats = measure(lambda: run(x), min_seconds=seconds)
        timed = "host arrays, CPU"
    return {"p50_ms": round(stats.p50_ms, 5), "p99_ms": round(stats.p99_ms, 5), "calls": stats.calls, "timed": timed}


def markdown(result: dict, bench_md: str) -> str:
    env = result["environment"]
    gpu = env.get("gpu") or {}
    lines = [f"# GPU bench: {gpu.get('name', 'no GPU (smoke run on CPU)')} ({result['date']})", "",
             f"Command: `{result['command']}`. {result['note']}", ""]
    if result["left_out"]:
        lines += ["## Left out (time budget)", ""] + [f"- {s}" for s in result["left_out"]] + [""]
    lines += ["## Targets (issue 16)", ""] + [f"- {v}" for v in result["verdicts"]] + [""]
    o = result["empty_model"]
    lines += [f"Empty model (nn.Identity, {o['timed']}): p50 {o['p50_ms']:.4f} ms, p99 {o['p99_ms']:.4f} ms over "
              f"{o['calls']} calls: rows near this measure the harness, not the model.", ""]
    lines += ["## Fastest row per run and batch size", "", "```", *result["table"], "```", ""]
    body = bench_md.split("\n", 2)[2] if bench_md.startswith("# ") else bench_md
    return "\n".join(lines) + "\n## Every row (cnndeploy bench)\n\n" + body.split("![")[0].rstrip() + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("CNNDEPLOY_DATA", str(REPO.parent / "shared" / "datasets")))
    ap.add_argument("--runs", nargs="+", help="bench these run directories as they are (no training)")
    ap.add_argument("--subset", type=int, default=10000, help="training images per model")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backends", help=f"comma list (default {','.join(GPU_BACKENDS)}; --smoke: "
                                       f"{','.join(CPU_BACKENDS)})")
    ap.add_argument("--max-seconds", type=float, default=420.0,
                    help="the whole script's budget (one device call is at most 8 minutes)")
    ap.add_argument("--out", default=str(REPO / "results"))
    ap.add_argument("--keep", help="keep the run directories and the bench folder here (default: a temp dir)")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, LeNet-5 only, on the shipped MNIST subset, tiny settings, torch and ort")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    import torch

    cuda = torch.cuda.is_available()
    models, backends, batches, device = MODELS, GPU_BACKENDS, GPU_BATCHES, "cuda"
    if args.smoke:
        models, backends, batches, device = MODELS[:1], CPU_BACKENDS, [1, 8], "cpu"
        args.subset, args.epochs, args.calib_size, args.rounds = 256, 1, 32, 2
        args.data_dir = str(REPO / "data" / "mnist-mini")
    elif not cuda:
        sys.exit("gpu_bench.py: no CUDA GPU here (torch.cuda.is_available() is False); "
                 "expected a GPU machine, or --smoke for the CPU run")
    if args.backends:
        backends = [b for b in args.backends.split(",") if b]
    left_out: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        runs = [Path(r) for r in args.runs or []]
        if not args.runs:
            for m, d in models:
                if time.perf_counter() - start > PREPARE_SHARE * args.max_seconds:
                    left_out.append(f"{m}-{d}: not prepared, {time.perf_counter() - start:.0f} s of "
                                    f"--max-seconds {args.max_seconds:.0f} already spent")
                    continue
                runs += prepare(root, m, d, args.data_dir, device=device, subset=args.subset, epochs=args.epochs,
                                calib=args.calib_size)
        # what is left of the budget, less a margin for loading, accuracy and writing, shared by the rows
        left = args.max_seconds - (time.perf_counter() - start)
        backends, dropped = compile_guard(backends, [r.name for r in runs], batches, left)
        left_out += [dropped] if dropped else []
        rows_expected = max(1, len(runs) * VARIANTS_PER_RUN * len(backends) * len(batches))
        per_row = 0.05 if args.smoke else max(0.02, min(2.0, 0.5 * left / rows_expected))
        cfg = BenchConfig(backends=backends, batch_sizes=batches, min_seconds=per_row, rounds=args.rounds)
        t0 = time.perf_counter()
        run_bench(runs, cfg, out=root / "bench", data_dir=args.data_dir, progress=False)
        bench_seconds = time.perf_counter() - t0
        bench = read_bench(root / "bench")
        bench_md = (root / "bench" / "bench.md").read_text()
        slug = ("smoke-" if args.smoke else "") + gpu_slug(bench["environment"])
        out = Path(args.out)
        plots = out / f"gpu-bench-{slug}"
        plots.mkdir(parents=True, exist_ok=True)
        for png in (root / "bench").glob("*.png"):
            shutil.copy2(png, plots / png.name)
    rows = [r.to_json() for r in bench["rows"]]
    overhead = empty_model_overhead(cuda and not args.smoke, seconds=0.05 if args.smoke else 0.5)
    result = {"benchmark": "every variant on the GPU", "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(["python", "benchmarks/gpu_bench.py", *(argv if argv is not None else sys.argv[1:])]),
              "note": (f"Models trained {args.epochs} epoch(s) on {args.subset} images each (speed does not depend "
                       f"on the weights); backends {', '.join(backends)}; batches {batches}; {args.rounds} "
                       f"interleaved rounds, {per_row:.2f} s per row."),
              "smoke": args.smoke, "max_seconds": args.max_seconds, "left_out": left_out,
              "bench_seconds": round(bench_seconds, 1), "total_seconds": round(time.perf_counter() - start, 1),
              "config": bench["config"], "environment": bench["environment"], "verdicts": verdicts(rows), "empty_model": overhead,
              "table": table(rows), "rows": rows}
    (out / f"gpu-bench-{slug}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"gpu-bench-{slug}.md").write_text(markdown(result, bench_md))
    for s in left_out:
        print(f"left out: {s}")
    print("\n".join(result["verdicts"]))
    print(f"-> {out / f'gpu-bench-{slug}'}.json, .md ({result['total_seconds']:.0f} s)")
    print("\n".join(result["table"]))
    return result


if __name__ == "__main__":
    main()
