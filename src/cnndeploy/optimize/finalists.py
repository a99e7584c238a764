"""The end of the search: the finalists timed side by side with test accuracy, best.onnx, the record."""

from __future__ import annotations

import logging
import shutil
from typing import TYPE_CHECKING

from cnndeploy.artifacts import files as layout
from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.files import FileSpec, spec_of
from cnndeploy.artifacts.records import Candidate, OptimizeRecord
from cnndeploy.artifacts.variants import Variant
from cnndeploy.fileio import atomic_path

if TYPE_CHECKING:
    from cnndeploy.optimize.search import Search

log = logging.getLogger("cnndeploy")


def _spec(search: "Search", c: Candidate) -> FileSpec:
    stage = search.stages[c.stage]
    row = spec_of(stage.run / c.file)
    if row is not None:
        return row
    from cnndeploy.optimize.stages import int8_spec

    return int8_spec(search.quant_target, len(c.excluded_nodes))


def _variant(search: "Search", c: Candidate) -> Variant:
    from cnndeploy.artifacts.files import compute_spec

    base = _spec(search, c)
    return Variant(search.stages[c.stage].run, base if c.precision == base.precision else compute_spec(base, c.precision))


def _final_run(search: "Search", finalists: list[Candidate]) -> None:
    """One interleaved run of the finalists and the reference, on the test split: test accuracy of each
    exact file on its backend (reported, never decided on) and speed ratios from the same rounds."""
    from cnndeploy.bench.harness import time_variants

    group = ([search.reference] if search.reference else []) + finalists
    jobs = [(_variant(search, c), c.backend) for c in group]
    data = {search.stages[c.stage].run.name: (ModelCard.read(search.stages[c.stage].run), search.test,
                                              search.costs[c.stage]) for c in group}
    cfg = search._bench_cfg(tuple(dict.fromkeys(c.backend for c in group)))
    rows = time_variants(jobs, data, cfg, progress=search.progress, desc="finalists")
    by_key = {(r.run, r.file, r.backend, r.precision): r for r in rows}
    for c in group:
        r = by_key.get((search.stages[c.stage].run.name, c.file, c.backend, c.precision))
        if r is None or r.status != "ok":
            continue
        c.test_accuracy, c.final_throughput_ips, c.final_spread = r.accuracy, r.throughput_ips, r.spread
    ref = search.reference.final_throughput_ips if search.reference else None
    for c in group:
        if ref and c.final_throughput_ips:
            c.speedup_vs_reference = round(c.final_throughput_ips / ref, 3)


def pick(timed: list[Candidate]) -> Candidate:
    """The fastest finalist in the side-by-side run; among those it does not beat by more than the run's
    spread (no difference, measured), the one with the best validation accuracy."""
    from cnndeploy.optimize.report import speeds

    fastest = max(timed, key=lambda c: c.final_throughput_ips)
    ties = [c for c in timed if (s := speeds(c, fastest))[0] >= s[1] * (1 - s[2])]
    return max(ties, key=lambda c: (c.val_accuracy or 0.0, c.final_throughput_ips))


def finalise(search: "Search", finished: bool) -> OptimizeRecord:
    from cnndeploy.optimize.report import explain, write_report

    pool = sorted((c for c in search.candidates if c.within_budget and c.throughput_ips and search._deployable(c)
                   and c.file != "-"), key=lambda c: -c.throughput_ips)
    from cnndeploy.optimize.search import FINALISTS

    finalists = pool[:FINALISTS]
    # the finalists' run costs about a stage's measuring; a search that stopped because its next step
    # would not fit may still have room for it (o07: 712 s left, the run takes about 214 s)
    left = max(0.0, search.deadline.left())
    if left < search.measure_cost and len(finalists) > 1:
        finalists = finalists[:1]
        search.deadline.skip(f"final side-by-side run: only the best candidate and the reference were timed "
                             f"again, {left:.0f} s of the time budget being left, less than measuring a stage "
                             f"took ({search.measure_cost:.0f} s)")
    if finalists:
        _final_run(search, finalists)
    timed = [c for c in finalists if c.final_throughput_ips]
    chosen = pick(timed) if timed else (finalists[0] if finalists else None)
    best_file = None
    if chosen is not None:
        best_file = _write_best(search, chosen)
    why = explain(search, chosen)
    record = OptimizeRecord(
        source_run=str(search.parent), max_drop=search.cfg.max_drop, target=search.cfg.target,
        batch_size=search.cfg.batch_size, backends=list(search.backends), validation=search.validation,
        reference=search.reference.to_json() if search.reference else {}, candidates=search.candidates,
        chosen=chosen.name if chosen else None, best_file=best_file, skipped=search.deadline.skipped,
        why_lost=why, sensitivity=search.sensitivity, fallback=search.fallback, qat=search.qat,
        time_budget_s=search.cfg.time_budget, elapsed_s=round(search.deadline.elapsed(), 1), finished=finished,
        config=dict(search.cfg.__dict__), environment=_environment(search))
    record.write(search.out)
    write_report(search.out, record)
    return record


def _write_best(search: "Search", c: Candidate) -> str:
    """DIR/best.onnx: the chosen file with its lineage in the metadata, and DIR/model.json beside it,
    so `bench`, `eval` and `serve` take DIR like any run directory."""
    import onnx

    from cnndeploy.optimize.search import json_line, lineage

    run = search.stages[c.stage].run
    proto = onnx.load(str(run / c.file))
    props = {p.key: p.value for p in proto.metadata_props}
    props[layout.LINEAGE_KEY] = json_line(lineage(search, c))
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    with atomic_path(search.out / layout.BEST) as tmp:
        onnx.save(proto, str(tmp))
    shutil.copy2(run / layout.MODEL_JSON, search.out / layout.MODEL_JSON)
    return layout.BEST


def _environment(search: "Search") -> dict:
    from cnndeploy.bench.env import environment

    env = environment(search.cfg.threads)
    return {k: env.get(k) for k in ("cpu", "cores", "threads", "gpu", "versions", "git_commit", "bf16_isa")}
