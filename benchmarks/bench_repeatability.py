"""Repeatability of `cnndeploy bench`: two back-to-back runs of the same artifacts, p50 side by side.

    python benchmarks/bench_repeatability.py RUN_DIR... [--backends ort] [--batch-sizes 1,64]
                                             [--min-seconds 2] [--threads 2] [--data-dir DIR]

Target: the two p50 latencies of every row within 10 % of each other on this machine.
Spread of a row = |p50_a - p50_b| / min(p50_a, p50_b). Writes results/bench-repeatability.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cnndeploy.bench.env import environment  # noqa: E402
from cnndeploy.bench.harness import BenchConfig, run_bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+")
    ap.add_argument("--backends", default="ort")
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir")
    ap.add_argument("--out", default=str(REPO / "results" / "bench-repeatability.json"))
    args = ap.parse_args()
    cfg = BenchConfig(backends=args.backends.split(","), batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                      threads=args.threads, min_seconds=args.min_seconds)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            t0 = time.perf_counter()
            rows = run_bench(args.run_dirs, cfg, out=Path(tmp) / str(i), data_dir=args.data_dir, progress=False)
            runs.append(({(r["variant"], r["backend"], r["batch_size"]): r["latency_ms_p50"]
                          for r in rows if r["status"] == "ok"}, time.perf_counter() - t0))
    (a, secs_a), (b, secs_b) = runs
    table = [{"variant": k[0], "backend": k[1], "batch_size": k[2], "p50_ms_a": round(a[k], 4),
              "p50_ms_b": round(b[k], 4), "spread": round(abs(a[k] - b[k]) / min(a[k], b[k]), 4)}
             for k in sorted(a) if k in b]
    worst = max(t["spread"] for t in table)
    result = {"command": " ".join(["python", *sys.argv]), "rows": table, "max_spread": worst,
              "within_10_percent": worst <= 0.10, "seconds_per_run": [round(secs_a, 1), round(secs_b, 1)],
              "environment": environment(args.threads)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for t in table:
        print(f"{t['variant']:32s} {t['backend']:5s} b{t['batch_size']:<4d} {t['p50_ms_a']:9.4f} "
              f"{t['p50_ms_b']:9.4f} ms  spread {100 * t['spread']:5.1f}%")
    print(f"max spread {100 * worst:.1f}% -> {args.out}")


if __name__ == "__main__":
    main()
