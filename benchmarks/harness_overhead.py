"""Overhead of the timing harness on the ONNX Runtime path, with a no-op model at batch 1.

    python benchmarks/harness_overhead.py [--rounds 5] [--calls 20000]

Per round, interleaved: (a) a bare loop of `session.run` calls timed as a whole (no per-call
clock reads: the floor), (b) `cnndeploy.bench.measure` over the same call, and (c) `measure`
over the bench's own ONNX Runtime runner (`make_runner("ort", ...)`: the exact path a bench row
times). Overhead = mean per-call time of (b) or (c) minus that of (a).
Writes results/harness-overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from cnndeploy.bench import environment, measure  # noqa: E402
from cnndeploy.runtime.runners import make_runner  # noqa: E402
from cnndeploy.artifacts import spec  # noqa: E402
from cnndeploy.artifacts.variants import Variant  # noqa: E402


def noop_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "noop",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 1, 1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def noop_session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--out", default=str(REPO / "results"))
    args = ap.parse_args()
    model = noop_model()
    sess = noop_session(model)
    feed = {"input": np.zeros((1, 1, 1, 1), np.float32)}
    call = lambda: sess.run(None, feed)  # noqa: E731
    tmp = Path(tempfile.mkdtemp(prefix="noop-"))
    onnx.save(model, str(tmp / "model.onnx"))
    runner = make_runner("ort", Variant(tmp, spec("model.onnx")), threads=1)
    x = feed["input"]
    bare_us, harness_us, harness_p50_us, runner_us = [], [], [], []
    for _ in range(args.rounds):
        for _ in range(1000):
            call()
        t0 = time.perf_counter_ns()
        for _ in range(args.calls):
            call()
        bare_us.append((time.perf_counter_ns() - t0) / args.calls / 1000)
        stats = measure(call, warmup=1000, min_calls=args.calls, min_seconds=0, max_calls=args.calls)
        harness_us.append(stats.mean_ms * 1000)
        harness_p50_us.append(stats.p50_ms * 1000)
        full = measure(lambda: runner(x), warmup=1000, min_calls=args.calls, min_seconds=0, max_calls=args.calls)
        runner_us.append(full.mean_ms * 1000)
    overhead = [h - b for h, b in zip(harness_us, bare_us)]
    overhead_runner = [r - b for r, b in zip(runner_us, bare_us)]
    result = {"benchmark": "timing-harness overhead, ORT no-op model, batch 1", "rounds": args.rounds,
              "calls_per_round": args.calls, "bare_loop_us_per_call": [round(x, 3) for x in bare_us],
              "harness_mean_us_per_call": [round(x, 3) for x in harness_us],
              "harness_p50_us_per_call": [round(x, 3) for x in harness_p50_us],
              "overhead_us_per_call": [round(x, 3) for x in overhead],
              "overhead_us_median": round(statistics.median(overhead), 3),
              "bench_runner_mean_us_per_call": [round(x, 3) for x in runner_us],
              "bench_runner_overhead_us_per_call": [round(x, 3) for x in overhead_runner],
              "bench_runner_overhead_us_median": round(statistics.median(overhead_runner), 3),
              "machine": environment(threads=1), "command": " ".join(["python", *sys.argv])}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "harness-overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
