"""Markdown: the bench table (bench.md) and the pipeline's report.md.

report.md puts on one screen what a reader came for: the paper's Table 1 beside ours, then
per model what pruning and INT8 cost in accuracy and buy in size and speed, then where it ran.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.files import PRECISION_ORDER, REPORT, row_label
from cnndeploy.artifacts.records import PruneRecord, read_bench, read_metrics
from cnndeploy.artifacts.variants import family_root
from cnndeploy.fileio import write_bytes_atomic
from cnndeploy.runtime.runners import BACKENDS

# Lu & Song, Table 1: highest test accuracy (%) per network family (the study this toolkit follows).
PAPER = {"mnist": {"ResNet": 99.665, "LeNet": 99.110, "AlexNet": 99.440},
         "cifar10": {"ResNet": 86.600, "LeNet": 63.470, "AlexNet": 84.140}}
FULL_TEST_SET = {"mnist": 10_000, "cifar10": 10_000}
PLOTS = (("accuracy_vs_latency.png", "accuracy vs latency (Pareto front dashed)"),
         ("throughput_vs_batch.png", "throughput vs batch size"), ("size.png", "file size per variant"))


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def family(model: str) -> str:
    return "ResNet" if model.startswith("resnet") else {"lenet5": "LeNet", "alexnet": "AlexNet"}.get(model, model)


def bench_markdown(rows: list[dict], env: dict, config: dict | None = None) -> str:
    """bench.md: the measured rows, then one line per backend that measured nothing, then failures."""
    ok = [r for r in rows if r["status"] == "ok"]
    memory = any(r.get("peak_mem_mb") is not None for r in ok)  # measured on GPU only (bench/memory.py)
    ran = any(r.get("compute_precision") for r in ok)  # a runtime said what it ran (OpenVINO)
    device = any(r.get("timed") for r in ok)          # GPU rows timed on device-resident inputs
    compiled = any(r.get("compile_seconds") is not None for r in ok)
    cols = ["variant", "backend", "batch", *(["ran in (batch shape)"] if ran else []), "accuracy",
            "p50 ms", *(["p50 ms incl. host copies"] if device else []), "p99 ms", "images/s", "spread",
            "GOP/s (% of peak)", *(["peak MB"] if memory else []),
            "load s", *(["compile s (mode)"] if compiled else []), "size bytes", "MMACs", "× parent",
            "slower than parent"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in ok:
        share = f" ({100 * r['peak_share']:.1f}%)" if r.get("peak_share") is not None else ""
        compute = f"{r['compute_precision']} ({r.get('batch_shape')})" if r.get("compute_precision") else "—"
        cells = [_variant_cell(r), r["backend"], str(r["batch_size"]),
                 *([compute] if ran else []), _fmt(r.get("accuracy"), ".2%"),
                 _fmt(r.get("latency_ms_p50"), ".3f"),
                 *([_fmt(r.get("latency_ms_p50_with_copies"), ".3f")] if device else []),
                 _fmt(r.get("latency_ms_p99"), ".3f"),
                 _fmt(r.get("throughput_ips"), ".1f"), _fmt(r.get("spread"), ".1%"),
                 _fmt(r.get("achieved_gops"), ".2f") + share,
                 *([_fmt(r.get("peak_mem_mb"), ".0f")] if memory else []), _fmt(r.get("load_seconds"), ".3f"),
                 *([_fmt(r.get("compile_seconds"), ".1f") + (f" ({r['compile_mode']})" if r.get("compile_mode")
                                                             else "")] if compiled else []),
                 _fmt(r.get("size_bytes"), ".0f"),
                 _fmt(r["macs"] / 1e6 if r.get("macs") else None, ".2f"), _vs_parent(r), _flag(r)]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) if ok else "No row was measured."
    text = f"# Benchmark\n\n{environment_line(env)}\n\n"
    noise = noise_line(rows, config)
    text += (noise + "\n\n" if noise else "") + table + "\n"
    text += _listed("Not measured", skipped_lines(rows)) + _listed("Failed", failed_lines(rows))
    plots = "\n".join(f"![{title}]({name})" for name, title in PLOTS)
    return text + f"\n{plots}\n"


def _clocks(c: dict | None) -> str:
    """nvidia-smi's clocks as "1980/3201 MHz"; "unknown" without nvidia-smi."""
    return f"{c.get('sm_mhz')}/{c.get('mem_mhz')} MHz" if c else "unknown"


def _variant_cell(r: dict) -> str:
    """The variant; a row computed in another precision than its file's says so, and names the file."""
    label = row_label(r.get("file"), r.get("precision"))
    return f"{r['variant']} ({label}, {r['file']})" if " compute of " in label else r["variant"]


def _version(name: str, version: str, env: dict) -> str:
    build = env.get("openvino_build") if name == "openvino" else None   # openvino.get_version()
    return f"{name} {version}" + (f" (build {build})" if build else "")


def _listed(title: str, items: list[str]) -> str:
    return f"\n{title}:\n" + "".join(f"- {s}\n" for s in items) if items else ""


def _vs_parent(r: dict, flag: bool = False) -> str:
    """Throughput over the FP32 parent's, same batch size; names the parent's backend where it differs."""
    ratio = r.get("speed_vs_parent")
    if ratio is None:
        return "—"
    text = f"{ratio:.2f}×"
    if r.get("parent_backend") and r["parent_backend"] != r["backend"]:
        text += f" (vs {r['parent_backend']})"
    if flag and r.get("slower_than_parent"):
        text += " ⚠ slower"
    elif flag and ratio < 1:
        text += " (within noise)"
    return text


def _flag(r: dict) -> str:
    slower = r.get("slower_than_parent")
    if r.get("slower_than_fp16"):   # GPU INT8 files: Q/DQ in floating point
        return ("**yes**; " if slower else "") + "**slower than FP16** (Q/DQ run in floating point)"
    if slower:
        return "**yes**"
    if slower is False and (r.get("speed_vs_parent") or 1) < 1 and r.get("flag_tolerance") is not None:
        return f"no: within noise (±{100 * r['flag_tolerance']:.1f}%)"
    return "no" if slower is False else "—"


def noise_line(rows: list[dict], config: dict | None) -> str:
    """How the timing was repeated and which gap counts as slower, with the thresholds used."""
    if not config or not config.get("rounds"):
        return ""
    rounds, seconds, floor = config["rounds"], config.get("min_seconds"), config.get("noise_floor", 0)
    used = sorted(r["flag_tolerance"] for r in rows if r.get("flag_tolerance") is not None)
    text = (f"Timing: every row in {rounds} interleaved rounds (variants of one model take turns, "
            f"{_fmt(seconds, 'g')} s per row in all); percentiles pool the rounds, \"spread\" is how far the "
            f"slowest round's throughput fell below the fastest's. \"Slower than parent\" means lower throughput "
            f"than the FP32 parent on the same backend and batch size by more than the larger spread of the two "
            f"rows, and by at least {100 * floor:.0f}%")
    if used:
        text += (f": thresholds used {100 * used[0]:.1f}–{100 * used[-1]:.1f}% "
                 f"(median {100 * used[len(used) // 2]:.1f}%)")
    return text + "."


def skipped_lines(rows: list[dict]) -> list[str]:
    """One line per backend that measured nothing for some variants: why, and for which."""
    reasons: dict[str, dict[tuple[str, str], list[str]]] = {}
    for r in rows:
        if not r["status"].startswith("skipped: "):
            continue
        reason, what, who = r["status"][len("skipped: "):], "variants", r["variant"]
        if r.get("file") is None:  # no file of this kind in a run: the same reason for every such run
            reason, what, who = reason.replace(f" in {r['run']}", ""), "runs", r["run"]
        names = reasons.setdefault(r["backend"], {}).setdefault((reason, what), [])
        if who not in names:
            names.append(who)
    lines = []
    for backend, why in reasons.items():
        parts = [f"{reason}: {', '.join(names)}" if len(names) <= 2 else f"{reason} ({len(names)} {what})"
                 for (reason, what), names in why.items()]
        lines.append(f"{backend}: " + "; ".join(parts))
    return lines


def failed_lines(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(f"{r['variant']} on {r['backend']}: {r['status'][len('failed: '):]}"
                              for r in rows if r["status"].startswith("failed")))


def environment_line(env: dict) -> str:
    """One paragraph a reader needs to trust (or discount) the numbers."""
    gpu = env.get("gpu")
    gpu_text = (f"{gpu['name']} (compute {gpu['compute_capability']}, driver {gpu.get('driver')}, CUDA "
                f"{gpu.get('cuda')}, cuDNN {gpu.get('cudnn')}, SM/memory clocks {_clocks(gpu.get('clocks_start'))} "
                f"at start, {_clocks(gpu.get('clocks_end'))} at end)" if gpu else "none")
    peaks = env.get("peak") or {}
    cpu = peaks.get("cpu") or {}
    bf16 = env.get("bf16_isa")
    native = ("" if "bf16_isa" not in env else   # records older than the field say nothing about it
              f"; bf16 compute through {bf16}" if bf16 else "; no native bf16, so no bf16 rows")
    text = (f"CPU {env['cpu']} ({', '.join(env['cpu_flags']) or 'no AVX flags read'}{native}), {env['cores']} cores, "
            f"threads {env['threads'] or 'default'}; GPU {gpu_text}; commit {env['git_commit']}; "
            + ", ".join(_version(k, v, env) for k, v in env["versions"].items() if v)
            + f". Peaks behind the utilisation shares: CPU {cpu.get('fp32_gflops')} GFLOP/s FP32, "
              f"{cpu.get('int8_gops')} GOP/s INT8 ({cpu.get('basis')})")
    ceiling = cpu.get("measured_ceiling_gflops")
    if ceiling and cpu.get("fp32_gflops"):
        text += (f"; for comparison, not as the yardstick: the best of a torch SGEMM and an onnxruntime 3×3 "
                 f"convolution reached {ceiling:.0f} GFLOP/s FP32 in this run "
                 f"({100 * ceiling / cpu['fp32_gflops']:.0f}% of the nominal peak; it moves with clock boost "
                 f"and load)")
    if peaks.get("gpu"):
        text += f"; GPU {peaks['gpu']['basis']}"
    return text + "."


def _paper_table(runs: list[Path]) -> str:
    lines = ["| model | dataset | paper | ours | Δ points | test images | data source |", "|---|---|---|---|---|---|---|"]
    notes, datasets = set(), set()
    for run in runs:
        if PruneRecord.read(run):
            continue
        card, metrics = ModelCard.read(run), read_metrics(run)
        dataset = card.dataset
        datasets.add(dataset)
        paper = PAPER.get(dataset, {}).get(family(card.model))
        ours = metrics.get("test_accuracy")
        n = metrics.get("test_images")
        delta = None if paper is None or ours is None else 100 * ours - paper
        subset = bool(n and n != FULL_TEST_SET.get(dataset, n))
        verdict = ("" if delta is None else ", not comparable (subset)" if subset
                   else " (beaten)" if delta > 0 else " (**not beaten**)")
        if subset:
            notes.add(f"{run.name} is measured on {n:,} test images, not the full {FULL_TEST_SET[dataset]:,}: "
                      "not comparable with the paper")
        lines.append(f"| {card.model} ({family(card.model)}) | {dataset} | {_fmt(paper, '.3f')}% | "
                     f"{_fmt(None if ours is None else 100 * ours, '.2f')}% | {_fmt(delta, '+.2f')}{verdict} | "
                     f"{_fmt(n, ',')} | {card.dataset_source} |")
    foot = ("\n\nThe paper reports its highest test accuracy; ours is the final epoch's, so on the full test "
            "split ours is the stricter number.")
    if "cifar10" in datasets:
        foot += (" `cifar10-jpeg` is the JPEG (quality 75) copy of CIFAR-10, which costs some accuracy against "
                 "the original images.")
    return "\n".join(lines) + foot + "\n" + "".join(f"\n- {n}" for n in sorted(notes)) + "\n"


def _label(run: Path, row: dict) -> str:
    pruned = PruneRecord.read(run)
    prefix = f"pruned {round(100 * pruned.amount)}% " if pruned else ""
    return prefix + row_label(row.get("file"), row["precision"])


def _compression_table(root: Path, rows: list[dict], runs: dict[str, Path]) -> str:
    """One model's variants: speed over each one's FP32 parent on the same backend, and over FP32
    PyTorch eager of the unpruned model, at batch 1 (latency) and the largest batch (throughput)."""
    mine = [r for r in rows if r["status"] == "ok" and r["run"] in runs]
    if not mine:
        return "No variant of this model was measured.\n"
    small, large = min(r["batch_size"] for r in mine), max(r["batch_size"] for r in mine)
    at = {(r["variant"], r["backend"], r["batch_size"]): r for r in mine}
    base_name = f"{root.name}:fp32"
    base = {b: at.get((base_name, "torch", b)) for b in (small, large)}
    lines = [f"| variant | backend | accuracy | Δ points | size MB | params | MMACs | p50 ms @ batch {small} | "
             f"images/s @ batch {large} | × parent @ {small} | × parent @ {large} | × FP32 eager @ {small} | "
             f"× FP32 eager @ {large} | % of peak @ {large} |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {b: i for i, b in enumerate(BACKENDS)}
    of = {r["variant"]: (r["run"], r["precision"]) for r in mine}
    rank = {p: i for i, p in enumerate(PRECISION_ORDER)}
    keys = sorted({(r["variant"], r["backend"]) for r in mine},  # the unpruned run first, FP32 first
                  key=lambda k: (of[k[0]][0] != root.name, of[k[0]][0], rank.get(of[k[0]][1], len(rank)),
                                 order.get(k[1], 99)))
    ref_acc = (base[small] or {}).get("accuracy")
    for variant, backend in keys:
        one, many = at.get((variant, backend, small)), at.get((variant, backend, large))
        r = one or many
        run = runs[r["run"]]
        eager1 = (base[small]["latency_ms_p50"] / one["latency_ms_p50"]) if one and base[small] else None
        eagern = (many["throughput_ips"] / base[large]["throughput_ips"]) if many and base[large] else None
        delta = None if ref_acc is None else 100 * (r["accuracy"] - ref_acc)
        lines.append(f"| {_label(run, r)} | {backend} | {100 * r['accuracy']:.2f}% | {_fmt(delta, '+.2f')} | "
                     f"{r['size_bytes'] / 1e6:.3f} | {_fmt(r.get('params'), ',')} | "
                     f"{_fmt(r['macs'] / 1e6 if r.get('macs') else None, '.2f')} | "
                     f"{_fmt(one and one['latency_ms_p50'], '.3f')} | {_fmt(many and many['throughput_ips'], ',.0f')} | "
                     f"{_vs_parent(one, flag=True) if one else '—'} | "
                     f"{_vs_parent(many, flag=True) if many else '—'} | "
                     f"{_fmt(eager1, '.2f')}× | {_fmt(eagern, '.2f')}× | "
                     f"{_fmt(many and many.get('peak_share') and 100 * many['peak_share'], '.1f')} |")
    return "\n".join(lines) + "\n"


def _compression_section(runs: list[Path], rows: list[dict]) -> str:
    by_name = {r.name: r for r in runs}
    families: dict[str, dict[str, Path]] = {}
    for run in runs:
        families.setdefault(family_root(run, by_name).name, {})[run.name] = run
    parts = []
    for root, members in families.items():
        model = ModelCard.read(by_name[root]).model
        parts.append(f"### {model} ({root})\n\n" + _compression_table(by_name[root], rows, members))
    text = "\n".join(parts)
    text += _listed("Not measured on this machine", skipped_lines(rows)) + _listed("Failed", failed_lines(rows))
    return text


def _stages(pipeline: dict) -> str:
    lines = ["| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']:.1f} |" for s in pipeline.get("stages", [])]
    ran = sum(s["seconds"] for s in pipeline.get("stages", []))
    return "\n".join(lines) + f"\n\nSeconds spent in stages run by the last call: {ran:.1f}.\n"


def _speedup_note(config: dict | None, rows: list[dict]) -> str:
    text = ("Speed-ups at the same batch size (latency at the smallest batch, throughput at the largest). "
            "\"× parent\" is over the variant's FP32 parent on the same backend: an FP16 or INT8 file over the "
            "FP32 ONNX of its run, a pruned FP32 model over the unpruned one; ⚠ marks a variant slower than its "
            "parent beyond the timing noise, \"within noise\" one whose gap is inside it. \"× FP32 eager\" is "
            "over FP32 PyTorch eager of the unpruned model. Δ points are against that model's accuracy.")
    noise = noise_line(rows, config)
    return text + (" " + noise if noise else "")


def write_report(out: Path, *, runs: list[Path], bench_dir: Path, pipeline: dict) -> Path:
    bench = read_bench(bench_dir)
    rows, env = bench["rows"], bench["environment"]
    rel = os.path.relpath(bench_dir, out)
    plots = "\n".join(f"![{title}]({rel}/{name})" for name, title in PLOTS if (bench_dir / name).is_file())
    curves = "\n".join(f"![{r.name} training curves]({os.path.relpath(r, out)}/curves.png)"
                       for r in runs if (r / "curves.png").is_file())
    text = (f"# cnndeploy report: {pipeline['dataset']}\n\n"
            f"Models {', '.join(pipeline['models'])}; structured pruning {round(100 * pipeline['prune'])}% of "
            f"channels; every accuracy measured on the whole test split from the exact file benchmarked. "
            f"Full rows: [{rel}/bench.md]({rel}/bench.md); stage log: pipeline.json.\n\n"
            f"## 1. The paper's Table 1 beside ours\n\n{_paper_table(runs)}\n"
            f"## 2. What compression costs and buys\n\n{_speedup_note(bench.get('config'), rows)}\n\n"
            f"{_compression_section(runs, rows)}\n"
            f"## 3. Environment\n\n{environment_line(env)}\n\n"
            f"## 4. Plots\n\n{plots}\n\n{curves}\n\n"
            f"## 5. Pipeline stages\n\n{_stages(pipeline)}")
    path = out / REPORT
    write_bytes_atomic(path, text.encode())
    return path
