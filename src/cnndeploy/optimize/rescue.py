"""When an INT8 file misses the budget but is faster than the float files: fallback, then QAT.

Sensitivity ranks the layers by how much quantization error each one adds (quant/sensitivity.py,
on calibration images); fallback keeps the most sensitive in float one at a time until a file is
within budget or no faster than float; QAT fine-tunes through the training loop where fallback
could not get there.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from cnndeploy.artifacts import files as layout
from cnndeploy.artifacts.records import Candidate
from cnndeploy.errors import CnnDeployError
from cnndeploy.optimize.stages import Stage, int8_spec, make_int8

if TYPE_CHECKING:
    from cnndeploy.optimize.search import Search

log = logging.getLogger("cnndeploy")
SENSITIVITY_IMAGES = 256   # calibration images the per-layer error is measured on


def _tput(cands: list[Candidate]) -> float:
    return max((c.throughput_ips or 0.0 for c in cands), default=0.0)


def _noise(cands: list[Candidate]) -> float:
    return max((c.spread or 0.0 for c in cands), default=0.0)


def rescue_int8(search: "Search", stage: Stage) -> None:
    ok = [c for c in search.candidates if c.stage == stage.name and c.status == "ok" and search._deployable(c)]
    int8 = [c for c in ok if c.precision.startswith("int8") and not c.excluded_nodes]
    floats = [c for c in ok if not c.precision.startswith("int8")]
    if not int8 or any(c.within_budget for c in int8):
        return
    fastest_float = _tput(floats)
    worst = min(int8, key=lambda c: c.val_drop_points or 0.0)
    if _tput(int8) <= fastest_float * (1 + max(_noise(int8), _noise(floats))):
        search.fallback.append({"stage": stage.name, "steps": [], "outcome": (
            f"not rescued: INT8 misses the budget ({worst.val_drop_points:+.2f} points at best) and is no "
            f"faster than float here ({_tput(int8):.0f} vs {fastest_float:.0f} images/s)")})
        return
    from cnndeploy.quant.sensitivity import fallback_order, layer_sensitivity

    # a step quantizes and measures one file; measuring a stage measured two
    step_seconds = search.measure_cost / 2
    if not search.deadline.allows(step_seconds, f"{stage.name}: the fallback (layer sensitivity, then INT8 "
                                  "with layers in float)", keep=search.measure_cost):
        search.fallback.append({"stage": stage.name, "steps": [], "outcome": "not tried: the time budget"})
        return
    int8_file = stage.run / layout.QUANT_TARGETS[search.quant_target]
    errors = layer_sensitivity(stage.run / layout.ONNX, int8_file, search.calib[:SENSITIVITY_IMAGES])
    search.sensitivity[stage.name] = [e.as_dict() for e in errors]
    backends = tuple(dict.fromkeys(c.backend for c in int8))
    entry: dict = {"stage": stage.name, "steps": [], "outcome": None}
    search.fallback.append(entry)
    excluded: list[str] = []
    for node in fallback_order(errors)[:search.cfg.max_fallback]:
        if not search.deadline.allows(step_seconds, f"{stage.name}: INT8 with {len(excluded) + 1} layers in float",
                                      keep=search.measure_cost):
            entry["outcome"] = "stopped by the time budget"
            return
        t0 = time.perf_counter()
        excluded.append(node)
        row = make_int8(stage, search.calib, search.quant_target, excluded)
        found = search._measure(stage, [row], backends, label=f"{stage.name} fallback {len(excluded)}")
        step_seconds = time.perf_counter() - t0
        entry["steps"].append({"excluded": list(excluded), "file": row.name, "seconds": round(step_seconds, 1),
                               "rows": [{"backend": c.backend, "val_drop_points": c.val_drop_points,
                                         "throughput_ips": c.throughput_ips} for c in found]})
        if any(c.within_budget for c in found):
            entry["outcome"] = f"within budget with {len(excluded)} layer(s) in float: {', '.join(excluded)}"
            return
        if _tput([c for c in found if c.status == "ok"]) <= fastest_float:
            entry["outcome"] = (f"stopped: with {len(excluded)} layer(s) in float INT8 is no faster than float "
                                f"({_tput(found):.0f} vs {fastest_float:.0f} images/s)")
            break
    else:
        entry["outcome"] = entry["outcome"] or f"{len(excluded)} layer(s) in float did not reach the budget"
    _qat(search, stage, int8)


def _qat(search: "Search", stage: Stage, ptq: list[Candidate]) -> None:
    from cnndeploy.quant.qat import qat_finetune

    epochs = search.cfg.qat_epochs
    if not epochs:
        return
    epoch = _epoch_seconds(search, stage)
    estimate = None if epoch is None else epoch * epochs + search.measure_cost / 2   # then its file is measured
    if not search.deadline.allows(estimate, f"{stage.name}: QAT ({epochs} epoch{'s' if epochs > 1 else ''})",
                                  keep=search.measure_cost):
        return
    qs = search._new_stage(stage.amount, qat=True)
    qs.qat_epochs = epochs
    t0 = time.perf_counter()
    try:
        result = qat_finetune(stage.run, qs.run, calib_images=search.calib, target=search.quant_target,
                              epochs=epochs, holdout=search.holdout, data_dir=search.data_dir,
                              progress=search.progress)
    except CnnDeployError as e:
        search._failed(qs, f"QAT of {stage.name} failed: {e}")
        return
    qs.seconds = time.perf_counter() - t0
    qs.files = [int8_spec(search.quant_target)]
    found = search._measure(qs, qs.files, tuple(dict.fromkeys(c.backend for c in ptq)), label=f"{qs.name}")
    before = min((c.val_drop_points for c in ptq if c.val_drop_points is not None), default=None)
    after = min((c.val_drop_points for c in found if c.val_drop_points is not None), default=None)
    search.qat.append({"stage": qs.name, "from": stage.name, "epochs": epochs, "seconds": round(qs.seconds, 1),
                       "ptq_val_drop_points": before, "qat_val_drop_points": after,
                       "recovered_points": None if before is None or after is None else round(before - after, 3),
                       "within_budget": any(c.within_budget for c in found),
                       "record": result.to_json() if hasattr(result, "to_json") else None})


def _epoch_seconds(search: "Search", stage: Stage) -> float | None:
    """What one QAT epoch should cost: a training epoch of the parent (its log.jsonl; None without one),
    scaled by the stage's MACs."""
    parent = search.parent_epoch_seconds()
    if parent is None:
        return None
    per_epoch = parent[0]
    parent_macs = (search.costs.get("p0") or {}).get("macs") or 1
    macs = (search.costs.get(stage.name) or {}).get("macs") or parent_macs
    return per_epoch * macs / parent_macs * 1.5   # fake quantization costs about half an epoch more
