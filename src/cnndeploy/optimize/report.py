"""Why each candidate lost (from measurements), optimize.md and the Pareto plot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cnndeploy.artifacts import files as layout
from cnndeploy.artifacts.records import Candidate, OptimizeRecord
from cnndeploy.fileio import write_bytes_atomic

if TYPE_CHECKING:
    from cnndeploy.optimize.search import Search

def speeds(a: Candidate, b: Candidate) -> tuple[float, float, float]:
    """a's and b's throughput and the spread that separates them, from the finalists' run where both were
    in it (one interleaved run beats two stage runs minutes apart), else from the stage runs."""
    if a.final_throughput_ips and b.final_throughput_ips:
        return (a.final_throughput_ips, b.final_throughput_ips,
                max(0.02, a.final_spread or 0.0, b.final_spread or 0.0))
    return a.throughput_ips or 0.0, b.throughput_ips or 0.0, max(0.02, a.spread or 0.0, b.spread or 0.0)


def _profile_line(search: "Search", c: Candidate) -> str | None:
    """Where this file's time goes on onnxruntime at the search's batch size (ort rows only)."""
    if c.backend != "ort":
        return None
    import numpy as np

    from cnndeploy.bench.profile import ort_time_split
    from cnndeploy.data.types import normalise

    x = normalise(np.resize(search.val.test_x[:search.cfg.batch_size],
                            (search.cfg.batch_size, *search.val.test_x.shape[1:])), search.card.mean, search.card.std)
    split = ort_time_split(search.stages[c.stage].run / c.file, x, threads=search.cfg.threads)
    return (f"convolution/GEMM {split.compute_ms:.2f} ms, quantize/dequantize {split.qdq_ms:.2f} ms, "
            f"other {split.other_ms:.2f} ms per batch")


def explain(search: "Search", chosen: Candidate | None) -> list[str]:
    """Set each candidate's `reason` and return the top reasons, one line each."""
    ok = [c for c in search.candidates if c.status == "ok" and c.throughput_ips]
    lines: list[str] = []
    by = {(c.stage, c.file, c.backend, c.precision): c for c in ok}
    # the chosen file did not lose: a stage-run figure must not call it slower than the finalists' run did
    losers = [c for c in ok if c is not chosen]
    # INT8 slower than the float file of the same run on the same backend
    for c in losers:
        if not c.precision.startswith("int8") or c.excluded_nodes:
            continue
        f = by.get((c.stage, layout.ONNX, c.backend, "fp32"))
        if f is None:
            continue
        mine, theirs, tol = speeds(c, f)
        if mine >= theirs * (1 - tol):
            continue
        ratio = mine / theirs
        detail = _profile_line(search, c)
        base = _profile_line(search, f)
        c.reason = (f"INT8 is slower than FP32 here: {ratio:.2f}x the throughput of {f.file} on {c.backend}"
                    + (f" (INT8: {detail}; FP32: {base})" if detail and base else ""))
        lines.append(f"{c.name}: {c.reason}")
    # pruned, and no faster than the unpruned file on the same backend
    for c in losers:
        if c.prune_amount == 0:
            continue
        p = by.get(("p0", c.file if c.file in (layout.ONNX, layout.WEIGHTS) else
                    layout.QUANT_TARGETS[search.quant_target], c.backend, c.precision))
        if p is None:
            continue
        mine, theirs, tol = speeds(c, p)
        if mine > theirs * (1 + tol):
            continue
        macs = (p.macs or 0) / (c.macs or 1)
        detail = _profile_line(search, c)
        spread = f", within the rounds' spread ({tol:.0%})" if mine > theirs else ""
        profile = f" ({detail}: what is left is not the convolutions' MACs)" if detail else ""
        c.reason = (f"pruned but no faster: {macs:.2f}x fewer MACs, {mine / theirs:.2f}x the "
                    f"throughput of {p.name}{spread}{profile}")
        lines.append(f"{c.name}: {c.reason}")
    over = [c for c in ok if c.within_budget is False]
    for c in over:
        c.reason = (c.reason + "; " if c.reason else "") + (
            f"over budget: {c.val_drop_points:+.2f} points on validation (budget {search.cfg.max_drop:g})")
    if over:
        worst = max(over, key=lambda c: c.val_drop_points)
        lines.append(f"{len(over)} candidate(s) over the budget on validation, worst {worst.name} "
                     f"({worst.val_drop_points:+.2f} points)")
    for c in ok:
        if c is chosen or c.reason or not chosen:
            continue
        mine, speed, tol = speeds(c, chosen)   # both from one run: the finalists' if both were in it
        if mine >= speed:   # a tie the choice broke by accuracy (finalists.pick)
            c.reason = (f"no faster than the chosen file beyond the rounds' spread ({mine:.0f} vs {speed:.0f} "
                        f"images/s, {tol:.0%}) and less accurate on validation ({c.val_drop_points:+.2f} vs "
                        f"{chosen.val_drop_points:+.2f} points)")
            continue
        tie = f", within the rounds' spread ({tol:.0%})" if mine >= speed * (1 - tol) else ""
        # a file left out of the finalists' run is compared with the chosen one's stage-run figure,
        # which the table's finalists' column does not show: say so
        where = "" if c.final_throughput_ips else " in the stage runs"
        c.reason = (f"within budget but slower: {mine:.0f} vs {speed:.0f} images/s for the chosen file"
                    f"{where}{tie}")
    for c in search.candidates:
        if c.status != "ok" and not c.reason:
            c.reason = c.status
    return lines


def _fmt(v, pattern: str, empty: str = "—") -> str:
    return empty if v is None else pattern.format(v)


def markdown(r: OptimizeRecord) -> str:
    ref = r.reference or {}
    chosen = next((c for c in r.candidates if c.name == r.chosen), None)
    out = [f"# optimize: {Path(r.source_run).name}, at most {r.max_drop:g} points, batch {r.batch_size}, "
           f"target {r.target}", ""]
    if chosen:
        out += [f"**Chosen: `{chosen.name}`** → `{r.best_file}`: validation {100 * chosen.val_accuracy:.2f}% "
                f"({chosen.val_drop_points:+.2f} points vs the reference), test "
                f"{_fmt(chosen.test_accuracy and 100 * chosen.test_accuracy, '{:.2f}%')} (reference "
                f"{_fmt(ref.get('test_accuracy') and 100 * ref['test_accuracy'], '{:.2f}%')}), "
                f"{_fmt(chosen.final_throughput_ips or chosen.throughput_ips, '{:,.0f}')} images/s, "
                f"**{_fmt(chosen.speedup_vs_reference, '{:.2f}x')}** FP32 PyTorch eager in the same run.", ""]
    else:
        out += ["**No candidate is within the budget.**", ""]
    v = r.validation
    out += [f"Decisions read {v.get('size')} validation images (seed {v.get('seed')}; {v.get('source')}); test "
            "accuracy is measured once, on the finalists, and only reported.",
            f"Searched in {r.elapsed_s:.0f} s" + (f" of a {r.time_budget_s:.0f} s budget" if r.time_budget_s else "")
            + ("" if r.finished else " — **stopped by the time budget**") + ".", "",
            f"![accuracy vs latency]({layout.PARETO})", ""]
    if r.why_lost:
        out += ["## Why the others lost", ""] + [f"- {line}" for line in r.why_lost] + [""]
    if r.skipped:
        out += ["## Not tried", ""] + [f"- {line}" for line in r.skipped] + [""]
    out += ["## Candidates", "", "| candidate | layers in float | QAT epochs | val acc | drop (pts) | within | "
            "p50 ms | p99 ms | images/s | size MB | test acc | vs eager | why not |", "|" + "---|" * 13]
    for c in sorted(r.candidates, key=lambda c: -(c.throughput_ips or 0)):
        out.append(" | ".join([
            f"| `{c.name}`", str(len(c.excluded_nodes)) if c.excluded_nodes else "", str(c.qat_epochs or ""),
            _fmt(c.val_accuracy and 100 * c.val_accuracy, "{:.2f}%"), _fmt(c.val_drop_points, "{:+.2f}"),
            {True: "yes", False: "no", None: "—"}[c.within_budget], _fmt(c.latency_ms_p50, "{:.3f}"),
            _fmt(c.latency_ms_p99, "{:.3f}"), _fmt(c.final_throughput_ips or c.throughput_ips, "{:,.0f}"),
            _fmt(c.size_bytes and c.size_bytes / 1e6, "{:.2f}"), _fmt(c.test_accuracy and 100 * c.test_accuracy,
                                                                     "{:.2f}%"),
            _fmt(c.speedup_vs_reference, "{:.2f}x"), ("**chosen**" if c.name == r.chosen else c.reason or "")]) + " |")
    for stage, errors in r.sensitivity.items():
        out += ["", f"## INT8 sensitivity, {stage} (most sensitive first)", "",
                "| layer | op | SQNR dB | lost here dB |", "|---|---|---|---|"]
        out += [f"| `{e['node']}` | {e['op_type']} | {e['sqnr_db']:.1f} | {e['local_loss_db']:.1f} |" for e in errors[:8]]
    for f in r.fallback:
        out += ["", f"**Fallback {f['stage']}:** {f.get('outcome')}"]
        for s in f.get("steps", []):
            rows = ", ".join(f"{x['backend']} {_fmt(x['val_drop_points'], '{:+.2f}')} pts "
                             f"{_fmt(x['throughput_ips'], '{:,.0f}')} img/s" for x in s["rows"])
            out.append(f"- {len(s['excluded'])} in float (`{s['excluded'][-1]}` added): {rows}")
    for q in r.qat:
        out += ["", f"**QAT {q['stage']}** ({q['epochs']} epoch(s), {q['seconds']:.0f} s): validation drop "
                f"{_fmt(q['ptq_val_drop_points'], '{:+.2f}')} → {_fmt(q['qat_val_drop_points'], '{:+.2f}')} points"]
    return "\n".join(out) + "\n"


def plot(r: OptimizeRecord, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnndeploy.bench.plots import _save, pareto

    # time per image from the figure the choice read: the finalists' side-by-side run where there is one
    pts = [c for c in r.candidates if c.status == "ok" and (c.final_throughput_ips or c.throughput_ips)
           and c.val_accuracy is not None]
    ms = [1000.0 / (c.final_throughput_ips or c.throughput_ips) for c in pts]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = {"fp32": "tab:blue", "bf16": "tab:purple", "fp16": "tab:cyan"}
    for c, x in zip(pts, ms):
        ax.scatter(x, 100 * c.val_accuracy, s=28 + 40 * (1 - c.prune_amount),
                   color=colours.get(c.precision, "tab:orange"), alpha=0.8,
                   marker="o" if c.within_budget else "x")
    front = pareto([(x, c.val_accuracy) for c, x in zip(pts, ms)])
    ax.plot([ms[i] for i in front], [100 * pts[i].val_accuracy for i in front], "k--", lw=0.8,
            label="Pareto front")
    ref = r.reference or {}
    if ref.get("val_accuracy") is not None:
        ax.axhline(100 * ref["val_accuracy"] - r.max_drop, color="tab:red", lw=0.8,
                   label=f"budget: reference − {r.max_drop:g} pts")
    chosen = next(((c, x) for c, x in zip(pts, ms) if c.name == r.chosen), None)
    if chosen:
        ax.scatter(chosen[1], 100 * chosen[0].val_accuracy, s=260, marker="*", color="gold",
                   edgecolor="k", zorder=5, label=f"chosen: {chosen[0].name}")
    ax.set_xscale("log")
    ax.set_xlabel(f"ms per image at batch {r.batch_size} (log; 1 / throughput, from the finalists' "
                  "side-by-side run where timed again)", fontsize=9)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("blue FP32, purple BF16, orange INT8; x = over budget; bigger = less pruned", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def write_report(out: Path, r: OptimizeRecord) -> None:
    plot(r, out / layout.PARETO)
    write_bytes_atomic(out / layout.OPTIMIZE_MD, markdown(r).encode())
