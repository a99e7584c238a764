"""Bench plots: accuracy vs latency (Pareto front marked), size per variant, throughput vs batch."""

from __future__ import annotations

from pathlib import Path

from cnndeploy.fileio import atomic_path


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another (lower latency and higher accuracy are better)."""
    keep = []
    for i, (lat, acc) in enumerate(points):
        if not any((l2 <= lat and a2 >= acc) and (l2, a2) != (lat, acc) for l2, a2 in points):
            keep.append(i)
    return sorted(keep, key=lambda i: points[i][0])


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def plot_all(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return []
    paths = []
    b1 = min(r["batch_size"] for r in ok)
    pts = [r for r in ok if r["batch_size"] == b1]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xy = [(r["latency_ms_p50"], 100 * r["accuracy"]) for r in pts]
    for r, (x, y) in zip(pts, xy):
        ax.scatter(x, y)
        ax.annotate(f"{r['variant']} [{r['backend']}]", (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = pareto(xy)
    ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "k--", lw=1, label="Pareto front")
    ax.set(xscale="log", xlabel=f"p50 latency at batch {b1} (ms, log)", ylabel="test accuracy (%)",
           title="accuracy vs latency")
    ax.legend()
    paths.append(out / "accuracy_vs_latency.png")
    _save(fig, paths[-1])

    sizes = {r["variant"]: r["size_bytes"] for r in ok}
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(sizes) + 1.5))
    ax.barh(list(sizes), [v / 1e6 for v in sizes.values()])
    ax.set(xlabel="file size (MB)", title="size per variant")
    paths.append(out / "size.png")
    _save(fig, paths[-1])

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({(r["variant"], r["backend"]) for r in ok}):
        series = sorted((r["batch_size"], r["throughput_ips"]) for r in ok if (r["variant"], r["backend"]) == key)
        ax.plot([b for b, _ in series], [t for _, t in series], marker="o", label=f"{key[0]} [{key[1]}]")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images / s", title="throughput vs batch size")
    ax.legend(fontsize=7)
    paths.append(out / "throughput_vs_batch.png")
    _save(fig, paths[-1])
    return paths
