"""Where an ONNX file's time goes on onnxruntime's CPU path: convolution vs quantize/dequantize vs the rest.

Read from onnxruntime's own per-node profiler (SessionOptions.enable_profiling), after its graph
optimisations, so a QDQ pair that was fused into a QLinearConv counts as convolution and one
that was left standing counts as Q/DQ: the split that explains "INT8 is slower than FP32 here".
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

COMPUTE_OPS = {"Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcFusedConv", "Gemm", "FusedGemm",
               "MatMul", "FusedMatMul", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
               "DynamicQuantizeMatMul", "QGemm"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


@dataclass(frozen=True)
class TimeSplit:
    """Milliseconds per call spent in each kind of node (the sum of kernel times, one thread's view)."""
    compute_ms: float
    qdq_ms: float
    other_ms: float
    nodes: int                 # kernels executed per call

    @property
    def total_ms(self) -> float:
        return self.compute_ms + self.qdq_ms + self.other_ms

    def share(self, part: str) -> float:
        return getattr(self, f"{part}_ms") / self.total_ms if self.total_ms else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total_ms": round(self.total_ms, 4)}


def ort_time_split(path: str | Path, x: np.ndarray, *, threads: int | None = None, calls: int = 10) -> TimeSplit:
    """Profile `calls` runs of the file on batch `x` (after 3 unprofiled-equivalent warm-up runs)."""
    from cnndeploy.runtime import int8_cpu
    from cnndeploy.runtime.onnxruntime_import import onnxruntime

    ort = onnxruntime()
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        if threads:
            opts.intra_op_num_threads = threads
        int8_cpu.faithful(opts, path, None)   # profile what the bench times
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        warm = 3
        for _ in range(warm + calls):
            session.run(None, {name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_run: dict[str, float] = {"compute": 0.0, "qdq": 0.0, "other": 0.0}
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    # the warm-up calls are the first `warm` model_run spans: drop nodes that started inside them
    cutoff = runs[warm]["ts"] if len(runs) > warm else 0
    kernels = 0
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or e.get("ts", 0) < cutoff:
            continue
        op = (e.get("args") or {}).get("op_name", "")
        kind = "compute" if op in COMPUTE_OPS else "qdq" if op in QDQ_OPS else "other"
        per_run[kind] += e.get("dur", 0) / 1000.0
        kernels += 1
    n = max(1, len(runs) - warm)
    return TimeSplit(round(per_run["compute"] / n, 4), round(per_run["qdq"] / n, 4),
                     round(per_run["other"] / n, 4), kernels // n)
