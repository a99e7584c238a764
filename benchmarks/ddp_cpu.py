"""Data-parallel training on CPU: `torchrun --nproc-per-node 2` (gloo) against one process, same global batch.

    python benchmarks/ddp_cpu.py [--data-dir data/mnist-mini] [--model lenet5] [--subset N]
                                 [--epochs 1] [--batch-size 128] [--repeats 3] [--out results/ddp-cpu.json]

Each repeat runs `cnndeploy train` as one process with 1 thread, as one process with 2 threads
(both cores), and under torchrun as 2 processes of 1 thread each (gloo; torchrun's default),
interleaved so that all see the same background load. Reported per repeat: max |weight
difference| of the 2-process run against the 1-thread process (same arithmetic per image) and,
for scale, of the 1-thread against the 2-thread process (the same run, other summation order);
optimizer steps; test accuracy; wall time of the whole command (interpreter start, torchrun and
its rendezvous included); and the seconds spent in training epochs (log.jsonl, rank 0's clock).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cnndeploy.artifacts import files as layout  # noqa: E402
from cnndeploy.models import weights  # noqa: E402
from cnndeploy.train.checkpoint import checkpoint_state  # noqa: E402


def _train_cmd(args: argparse.Namespace, out: Path) -> list[str]:
    cmd = ["train", "--model", args.model, "--dataset", "mnist", "--data-dir", args.data_dir, "--device", "cpu",
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--out", str(out), "--no-progress"]
    return cmd + (["--subset", str(args.subset)] if args.subset else [])


def _timed(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src")}
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _summary(run: Path, wall: float) -> dict:
    metrics = json.loads((run / layout.METRICS).read_text())
    log = [json.loads(line) for line in (run / layout.LOG).read_text().splitlines()]
    return {"wall_seconds": round(wall, 2), "train_seconds": round(sum(r["train_seconds"] for r in log), 2),
            "test_accuracy": metrics["test_accuracy"], "steps": checkpoint_state(run / layout.CHECKPOINT)["step"],
            "world_size": metrics["world_size"]}


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = (weights.load_tensors(p / layout.WEIGHTS)[0] for p in (a, b))
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(REPO / "data" / "mnist-mini"))
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--subset", type=int)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "results" / "ddp-cpu.json"))
    args = ap.parse_args()
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            one, two, ddp = (Path(tmp) / f"{k}{i}" for k in ("single1t", "single2t", "ddp2"))
            w1 = _timed([sys.executable, "-m", "cnndeploy", *_train_cmd(args, one)], threads=1)
            w2 = _timed([sys.executable, "-m", "cnndeploy", *_train_cmd(args, two)], threads=2)
            w3 = _timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                         "-m", "cnndeploy", *_train_cmd(args, ddp)], threads=1)
            pairs.append({"single1t": _summary(one, w1), "single2t": _summary(two, w2), "ddp2": _summary(ddp, w3),
                          "max_abs_weight_diff_ddp2_vs_single1t": _max_diff(one, ddp),
                          "max_abs_weight_diff_single2t_vs_single1t": _max_diff(one, two)})
            print(json.dumps(pairs[-1]))
    med = {k: {m: statistics.median(p[k][m] for p in pairs) for m in ("wall_seconds", "train_seconds")}
           for k in ("single1t", "single2t", "ddp2")}
    result = {"command": " ".join(sys.argv), "args": vars(args), "pairs": pairs, "median": med,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(med))


if __name__ == "__main__":
    main()
