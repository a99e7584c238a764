"""Train the six model x dataset pairs of the paper's Table 1 and compare with its cells.

    PYTHONPATH=src python benchmarks/reproduce_table1.py --data-dir ../shared/datasets
    PYTHONPATH=src python benchmarks/reproduce_table1.py --smoke      # tiny, CPU, for the tests
    PYTHONPATH=src python benchmarks/reproduce_table1.py --pair resnet18:cifar10 --sweep base,ema,erasing,cosine

Writes results/table1-<gpu>.json and .md: test accuracy, epochs, seconds per run, seconds
until the run first reached its target, GPU name, torch version and commit. Results are
rewritten after every run, so a run cut short still leaves what it finished.

--sweep trains several named recipes (SWEEP_RECIPES: `cnndeploy train` flags on top of the
registry's recipe) for one --pair at the same time, as separate `python -m cnndeploy train`
processes sharing the one GPU (a ResNet-18 CIFAR-10 run uses a fraction of an H200). Each gets
its own run directory and log file; the results go into results/table1-<gpu>-sweep-<pair>.json
and .md in the format above, with a recipe column and the recipe with the best final accuracy.
Seconds in a sweep are those of runs sharing the device, not of a run alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from cnndeploy.fileio import write_bytes_atomic, write_json_atomic  # noqa: E402
from cnndeploy.train.fit import TrainConfig, train  # noqa: E402

PAPER = {("resnet18", "mnist"): 0.99665, ("lenet5", "mnist"): 0.99110, ("alexnet", "mnist"): 0.99440,
         ("resnet18", "cifar10"): 0.86600, ("lenet5", "cifar10"): 0.63470, ("alexnet", "cifar10"): 0.84140}
# Targets: each paper cell beaten; CIFAR-10 targets are set higher than the paper.
TARGET = {("resnet18", "mnist"): 0.9967, ("lenet5", "mnist"): 0.9911, ("alexnet", "mnist"): 0.9944,
          ("resnet18", "cifar10"): 0.93, ("lenet5", "cifar10"): 0.65, ("alexnet", "cifar10"): 0.85}
# Cheapest runs first, so a call cut short keeps the most. Recipes are the registry's
# defaults (`cnndeploy train` with no flags) except where a GPU affords more epochs.
RUNS = [("lenet5", "mnist"), ("alexnet", "mnist"), ("lenet5", "cifar10"), ("alexnet", "cifar10"),
        ("resnet18", "mnist"), ("resnet18", "cifar10")]
GPU_EPOCHS = {("lenet5", "mnist"): 20}
# Named recipes for --sweep: flags added to `cnndeploy train` on top of the registry's recipe.
SWEEP_RECIPES = {
    "base": [],
    "ema": ["--ema", "0.999"],
    "erasing": ["--random-erasing", "0.5"],
    "cosine": ["--schedule", "cosine"],
    "onecycle": ["--schedule", "onecycle"],
    "ema-cosine": ["--ema", "0.999", "--schedule", "cosine"],
    "all": ["--ema", "0.999", "--random-erasing", "0.5", "--schedule", "cosine"],
}
SMOKE_SIZES = {"epochs": 1, "batch_size": 64, "subset": 256}
REPO = Path(__file__).resolve().parents[1]


def _commit() -> str:
    if os.environ.get("CNNDEPLOY_COMMIT"):
        return os.environ["CNNDEPLOY_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _first_reach(history: list[dict], target: float) -> float | None:
    elapsed = 0.0
    for row in history:
        elapsed += row["seconds"]
        if row["test_accuracy"] >= target:
            return round(elapsed, 2)
    return None


def _markdown(report: dict) -> str:
    sweep = report.get("sweep")
    lines = [f"# Paper Table 1 reproduced on {report['device']}", "",
             f"{report['date']}, torch {report['torch']}, commit {report['commit']}, "
             f"command `{report['command']}`. CIFAR-10 is the JPEG copy (quality 75) unless the "
             "source column says otherwise; accuracy is the final epoch's, on the full test set.", ""]
    if sweep:
        lines += [f"Sweep: {len(sweep['recipes'])} recipes trained concurrently on one device (seconds are "
                  "those of runs sharing it). Best final accuracy: "
                  f"**{sweep['winner'] or 'none finished'}**.", ""]
    head = "| recipe | flags " if sweep else ""
    lines += [f"{head}| model | dataset | source | paper | target | ours (final) | best epoch acc | beaten | "
              "epochs | seconds | s to target |", "|---" * (11 + 2 * bool(sweep)) + "|"]
    for r in report["runs"]:
        cells = f"| {r['recipe']} | `{' '.join(r['flags']) or '-'}` " if sweep else ""
        if r.get("failed"):
            lines.append(f"{cells}| {r['model']} | {r['dataset']} | FAILED: {r['failed']} |" + " |" * 8)
            continue
        lines.append(f"{cells}| {r['model']} | {r['dataset']} | {r['dataset_source']} | {100 * r['paper']:.3f}% | "
                     f"{100 * r['target']:.2f}% | {100 * r['test_accuracy']:.2f}% | "
                     f"{100 * r['best_test_accuracy']:.2f}% | {'yes' if r['target_met'] else 'NO'} | "
                     f"{r['epochs']} | {r['seconds']:.1f} | {r['seconds_to_target'] or '-'} |")
    return "\n".join(lines) + "\n"


def _row(model: str, dataset: str, metrics: dict, history: list[dict], seconds: float) -> dict:
    """One run's entry of the results JSON."""
    key, config = (model, dataset), metrics["config"]
    return {"model": model, "dataset": dataset, "dataset_source": metrics["dataset_source"],
            "paper": PAPER[key], "target": TARGET[key], "test_accuracy": metrics["test_accuracy"],
            "best_test_accuracy": metrics["best_test_accuracy"],
            "target_met": metrics["test_accuracy"] >= TARGET[key], "epochs": config["epochs"],
            "batch_size": config["batch_size"], "lr": config["lr"], "seconds": round(seconds, 2),
            "train_images_per_second": metrics["train_images_per_second"],
            "seconds_to_target": _first_reach(history, TARGET[key]), "history": history}


def _history(run_dir: Path) -> list[dict]:
    log = run_dir / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def _write(out: Path, name: str, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"{name}.json", report)
    write_bytes_atomic(out / f"{name}.md", _markdown(report).encode())


def _recipes(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SWEEP_RECIPES]
    if unknown or len(set(names)) != len(names) or len(names) < 2:
        raise SystemExit(f"--sweep {text!r}: expected two or more distinct names from "
                         f"{', '.join(SWEEP_RECIPES)}")
    return names


def _train_command(model: str, dataset: str, run_dir: Path, *, device: str, data_dir: str | None,
                   sizes: dict, flags: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "cnndeploy", "train", "--model", model, "--dataset", dataset,
           "--out", str(run_dir), "--device", device, "--no-progress"]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items() if v is not None]
    return cmd + (["--data-dir", data_dir] if data_dir else []) + flags


def sweep(args: argparse.Namespace, report: dict, *, device: str, tag: str) -> dict:
    """Train the recipes of --sweep for --pair concurrently, one process each; gather their results."""
    model, _, dataset = args.pair.partition(":")
    if (model, dataset) not in PAPER:
        raise SystemExit(f"--pair {args.pair!r}: expected one of "
                         f"{', '.join(f'{m}:{d}' for m, d in RUNS)}")
    names = _recipes(args.sweep)
    sizes = SMOKE_SIZES if args.smoke else {"epochs": args.epochs or GPU_EPOCHS.get((model, dataset))}
    root = Path(args.runs_dir) / f"sweep-{model}-{dataset}"
    # one thread each on CPU (the smoke test); on a GPU a few host threads each are plenty
    threads = 1 if device == "cpu" else max(1, (os.cpu_count() or 1) // len(names))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    procs = {}
    for name in names:
        run_dir = root / name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(root / f"{name}.log", "w")
        cmd = _train_command(model, dataset, run_dir, device=device, data_dir=args.data_dir, sizes=sizes,
                             flags=SWEEP_RECIPES[name])
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO),
                       log, time.perf_counter())
    began = min(t0 for _, _, t0 in procs.values())
    deadline = time.perf_counter() + args.max_seconds if args.max_seconds else None
    report["sweep"] = {"pair": args.pair, "recipes": {n: SWEEP_RECIPES[n] for n in names}, "winner": None,
                       "concurrent": len(names), "threads_each": threads}
    ended: dict[str, tuple[int | str, float]] = {}
    while len(ended) < len(procs):  # poll, so each run's seconds end when it does
        for name, (proc, log, t0) in procs.items():
            if name in ended:
                continue
            if proc.poll() is not None:
                ended[name] = (proc.returncode, time.perf_counter() - t0)
            elif deadline and time.perf_counter() > deadline:
                proc.kill()
                proc.wait()
                ended[name] = (f"killed after --max-seconds {args.max_seconds}", time.perf_counter() - t0)
            if name in ended:
                log.close()
        time.sleep(0.2)
    for name in names:
        row = _sweep_row(name, model, dataset, root, *ended[name])
        report["runs"].append({**row, "started_after_s": round(procs[name][2] - began, 3)})
    done = [r for r in report["runs"] if not r.get("failed")]
    report["sweep"]["winner"] = max(done, key=lambda r: r["test_accuracy"])["recipe"] if done else None
    _write(Path(args.out), f"table1-{tag}-sweep-{model}-{dataset}", report)
    for r in report["runs"]:
        print(f"{r['recipe']:10s} " + (f"FAILED ({r['failed']})" if r.get("failed") else
                                      f"{100 * r['test_accuracy']:.2f}% in {r['seconds']:.1f}s"), flush=True)
    print(f"winner: {report['sweep']['winner']}", flush=True)
    return report


def _sweep_row(name: str, model: str, dataset: str, root: Path, code, seconds: float) -> dict:
    run_dir, log = root / name, root / f"{name}.log"
    base = {"recipe": name, "flags": SWEEP_RECIPES[name], "run_dir": str(run_dir), "log": str(log)}
    metrics = run_dir / "metrics.json"
    if code != 0 or not metrics.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
        why = f"exit {code}" if isinstance(code, int) else code
        return {**base, "model": model, "dataset": dataset, "failed": f"{why}: {' '.join(tail)[:200]}",
                "seconds": round(seconds, 2), "history": _history(run_dir)}
    return {**base, **_row(model, dataset, json.loads(metrics.read_text()), _history(run_dir), seconds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("CNNDEPLOY_DATA"))
    ap.add_argument("--out", default="results")
    ap.add_argument("--runs-dir", default="results/tmp/table1")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU settings: checks the script, not accuracy")
    ap.add_argument("--only", help="comma list of model:dataset pairs to run")
    ap.add_argument("--sweep", metavar="RECIPES",
                    help=f"comma list of recipes to train concurrently for --pair: {', '.join(SWEEP_RECIPES)}")
    ap.add_argument("--pair", default="resnet18:cifar10", help="the model:dataset of --sweep")
    ap.add_argument("--epochs", type=int, help="with --sweep: epochs of every recipe (default: the recipe's)")
    ap.add_argument("--max-seconds", type=float,
                    help="with --sweep: kill the runs still going after this many seconds (recorded as failed)")
    args = ap.parse_args()
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    tag = "smoke" if args.smoke else re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    if args.only:  # a partial table never replaces a full one
        tag += "-only-" + re.sub(r"[^a-z0-9]+", "-", args.only.lower()).strip("-")
    report = {"device": gpu, "torch": torch.__version__, "commit": _commit(),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": " ".join(["python", *sys.argv]), "runs": []}
    if args.sweep:
        sweep(args, report, device=device, tag=tag)
        return
    only = set(args.only.split(",")) if args.only else None
    out = Path(args.out)
    for model, dataset in RUNS:
        if only and f"{model}:{dataset}" not in only:
            continue
        sizes = SMOKE_SIZES if args.smoke else {"epochs": GPU_EPOCHS.get((model, dataset))}
        cfg = TrainConfig(model=model, dataset=dataset, out=str(Path(args.runs_dir) / f"{model}-{dataset}"),
                          device=device, data_dir=args.data_dir, **sizes).resolved()
        run_dir = Path(cfg.out)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        t0 = time.perf_counter()
        metrics = train(cfg, progress=False)
        seconds = time.perf_counter() - t0
        report["runs"].append(_row(model, dataset, metrics, _history(run_dir), seconds))
        _write(out, f"table1-{tag}", report)
        key = (model, dataset)
        print(f"{model:9s} {dataset:8s} {100 * metrics['test_accuracy']:.2f}% "
              f"(target {100 * TARGET[key]:.2f}%) in {seconds:.1f}s", flush=True)


if __name__ == "__main__":
    main()
