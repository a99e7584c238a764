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
    fig, ax = plt.subplots(figsize=(8, 5))
    xy = [(r["latency_ms_p50"], 100 * r["accuracy"]) for r in pts]
    runs = sorted({r["run"] for r in pts})
    kinds = sorted({(r["precision"], r["backend"]) for r in pts})
    markers = "osD^v<>PXh*"
    colours = plt.get_cmap("tab10")
    # Colour = run directory, marker = precision x backend: a legend instead of labels that collide.
    for r, (x, y) in zip(pts, xy):
        ax.scatter(x, y, color=colours(runs.index(r["run"]) % 10),
                   marker=markers[kinds.index((r["precision"], r["backend"])) % len(markers)], s=40)
    front = pareto(xy)
    ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "k--", lw=1)
    for i in front:
        ax.annotate(f"{pts[i]['variant']} [{pts[i]['backend']}]", xy[i], fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    handles = [plt.Line2D([], [], color=colours(i % 10), marker="o", ls="", label=run) for i, run in enumerate(runs)]
    handles += [plt.Line2D([], [], color="grey", marker=markers[i % len(markers)], ls="", label=f"{p} [{b}]")
                for i, (p, b) in enumerate(kinds)]
    handles.append(plt.Line2D([], [], color="k", ls="--", label="Pareto front (labelled)"))
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set(xscale="log", xlabel=f"p50 latency at batch {b1} (ms, log)", ylabel="test accuracy (%)",
           title="accuracy vs latency")
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
