"""Markdown: the bench table (bench.md) and the pipeline's report.md.

report.md puts on one screen what a reader came for: the paper's Table 1 beside ours, then
per model what pruning and INT8 cost in accuracy and buy in size and speed, then where it ran.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.files import FILES, REPORT, spec
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


def bench_markdown(rows: list[dict], env: dict) -> str:
    head = ("| variant | backend | batch | accuracy | p50 ms | p99 ms | images/s | GOP/s (% of peak) | "
            "peak MB | size bytes | MMACs | slower than parent | status |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    body = []
    for r in rows:
        share = f" ({100 * r['peak_share']:.1f}%)" if r.get("peak_share") is not None else ""
        body.append(f"| {r['variant']} | {r['backend']} | {r['batch_size']} | {_fmt(r.get('accuracy'), '.2%')} | "
                    f"{_fmt(r.get('latency_ms_p50'), '.3f')} | {_fmt(r.get('latency_ms_p99'), '.3f')} | "
                    f"{_fmt(r.get('throughput_ips'), '.1f')} | {_fmt(r.get('achieved_gops'), '.2f')}{share} | "
                    f"{_fmt(r.get('peak_mem_mb'), '.0f')} | {_fmt(r.get('size_bytes'), '.0f')} | "
                    f"{_fmt(r['macs'] / 1e6 if r.get('macs') else None, '.2f')} | "
                    f"{_flag(r.get('slower_than_parent'))} | {r['status']} |")
    plots = "\n".join(f"![{title}]({name})" for name, title in PLOTS)
    return f"# Benchmark\n\n{environment_line(env)}\n\n{head}\n" + "\n".join(body) + f"\n\n{plots}\n"


def _flag(slower: bool | None) -> str:
    return "**yes**" if slower else "no" if slower is False else "—"


def environment_line(env: dict) -> str:
    """One paragraph a reader needs to trust (or discount) the numbers."""
    gpu = env.get("gpu")
    gpu_text = f"{gpu['name']} (compute {gpu['compute_capability']}, driver {gpu.get('driver')})" if gpu else "none"
    peaks = env.get("peak") or {}
    cpu = peaks.get("cpu") or {}
    text = (f"CPU {env['cpu']} ({', '.join(env['cpu_flags']) or 'no AVX flags read'}), {env['cores']} cores, "
            f"threads {env['threads'] or 'default'}; GPU {gpu_text}; commit {env['git_commit']}; "
            + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
            + f". Peaks behind the utilisation shares: CPU {cpu.get('fp32_gflops')} GFLOP/s FP32, "
              f"{cpu.get('int8_gops')} GOP/s INT8 ({cpu.get('basis')})")
    if peaks.get("gpu"):
        text += f"; GPU {peaks['gpu']['basis']}"
    return text + "."


def _paper_table(runs: list[Path]) -> str:
    lines = ["| model | dataset | paper | ours | Δ points | test images | data source |", "|---|---|---|---|---|---|---|"]
    notes = set()
    for run in runs:
        if PruneRecord.read(run):
            continue
        card, metrics = ModelCard.read(run), read_metrics(run)
        dataset = card.dataset
        paper = PAPER.get(dataset, {}).get(family(card.model))
        ours = metrics.get("test_accuracy")
        n = metrics.get("test_images")
        delta = None if paper is None or ours is None else 100 * ours - paper
        verdict = "" if delta is None else " (beaten)" if delta > 0 else " (**not beaten**)"
        if n and n != FULL_TEST_SET.get(dataset, n):
            notes.add(f"{run.name} is measured on {n:,} test images, not the full {FULL_TEST_SET[dataset]:,}: "
                      "not comparable with the paper")
        lines.append(f"| {card.model} ({family(card.model)}) | {dataset} | {_fmt(paper, '.3f')}% | "
                     f"{_fmt(None if ours is None else 100 * ours, '.2f')}% | {_fmt(delta, '+.2f')}{verdict} | "
                     f"{_fmt(n, ',')} | {card.dataset_source} |")
    foot = ("\n\nThe paper reports its highest test accuracy; ours is the final epoch's, on the whole test "
            "split, so ours is the stricter number. `cifar10-jpeg` is the JPEG (quality 75) copy of CIFAR-10, "
            "which costs some accuracy against the original images.")
    return "\n".join(lines) + foot + "\n" + "".join(f"\n- {n}" for n in sorted(notes)) + "\n"


def _label(run: Path, row: dict) -> str:
    pruned = PruneRecord.read(run)
    prefix = f"pruned {round(100 * pruned.amount)}% " if pruned else ""
    file = row.get("file") or ""
    label = spec(file).label if any(s.name == file for s in FILES) else row["precision"].upper()
    return prefix + label


def _compression_table(root: Path, rows: list[dict], runs: dict[str, Path]) -> str:
    """One model's variants, FP32 PyTorch first, with speed-ups over it at batch 1 and the largest batch."""
    mine = [r for r in rows if r["status"] == "ok" and r["run"] in runs]
    if not mine:
        return "No variant of this model was measured.\n"
    small, large = min(r["batch_size"] for r in mine), max(r["batch_size"] for r in mine)
    at = {(r["variant"], r["backend"], r["batch_size"]): r for r in mine}
    base_name = f"{root.name}:fp32"
    base = {b: at.get((base_name, "torch", b)) for b in (small, large)}
    lines = [f"| variant | backend | accuracy | Δ points | size MB | params | MMACs | p50 ms @ batch {small} | "
             f"images/s @ batch {large} | speed-up @ {small} | speed-up @ {large} | % of peak @ {large} |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {b: i for i, b in enumerate(BACKENDS)}
    keys = sorted({(r["variant"], r["backend"]) for r in mine},
                  key=lambda k: (not k[0].startswith(root.name + ":"), k[0], order.get(k[1], 99)))
    ref_acc = (base[small] or {}).get("accuracy")
    for variant, backend in keys:
        one, many = at.get((variant, backend, small)), at.get((variant, backend, large))
        r = one or many
        run = runs[r["run"]]
        speed1 = (base[small]["latency_ms_p50"] / one["latency_ms_p50"]) if one and base[small] else None
        speedn = (many["throughput_ips"] / base[large]["throughput_ips"]) if many and base[large] else None
        delta = None if ref_acc is None else 100 * (r["accuracy"] - ref_acc)
        slow = " ⚠ slower than its parent" if (many or {}).get("slower_than_parent") else ""
        lines.append(f"| {_label(run, r)} | {backend} | {100 * r['accuracy']:.2f}% | {_fmt(delta, '+.2f')} | "
                     f"{r['size_bytes'] / 1e6:.3f} | {_fmt(r.get('params'), ',')} | "
                     f"{_fmt(r['macs'] / 1e6 if r.get('macs') else None, '.2f')} | "
                     f"{_fmt(one and one['latency_ms_p50'], '.3f')} | {_fmt(many and many['throughput_ips'], ',.0f')} | "
                     f"{_fmt(speed1, '.2f')}× | {_fmt(speedn, '.2f')}×{slow} | "
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
    skipped = sorted({f"{r['backend']}: {r['status'][len('skipped: '):]}" for r in rows
                      if r["status"].startswith("skipped") and "runs " not in r["status"]})
    failed = sorted({f"{r['variant']} on {r['backend']}: {r['status']}" for r in rows if r["status"].startswith("failed")})
    text = "\n".join(parts)
    if skipped:
        text += "\nNot measured on this machine:\n" + "".join(f"- {s}\n" for s in skipped)
    if failed:
        text += "\nFailed:\n" + "".join(f"- {s}\n" for s in failed)
    return text


def _stages(pipeline: dict) -> str:
    lines = ["| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']:.1f} |" for s in pipeline.get("stages", [])]
    ran = sum(s["seconds"] for s in pipeline.get("stages", []))
    return "\n".join(lines) + f"\n\nSeconds spent in stages run by the last call: {ran:.1f}.\n"


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
            f"## 2. What compression costs and buys\n\nSpeed-ups are over FP32 PyTorch eager of the unpruned "
            f"model at the same batch size (latency at the smallest batch, throughput at the largest).\n\n"
            f"{_compression_section(runs, rows)}\n"
            f"## 3. Environment\n\n{environment_line(env)}\n\n"
            f"## 4. Plots\n\n{plots}\n\n{curves}\n\n"
            f"## 5. Pipeline stages\n\n{_stages(pipeline)}")
    path = out / REPORT
    write_bytes_atomic(path, text.encode())
    return path
