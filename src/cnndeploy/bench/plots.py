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


def _plain(value: float, _pos=None) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:g}"


def _plain_log_ticks(axis) -> None:
    """Log-axis ticks at 1-2-5 steps, labelled as plain numbers (0.03, 20,000) instead of 3x10^-2;
    the other minor ticks stay unlabelled so that labels never crowd."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    # over less than a 1-2-5 step matplotlib falls back to linear ticks, still labelled plainly
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(_plain))
    axis.set_minor_locator(LogLocator(base=10, subs="auto"))
    axis.set_minor_formatter(NullFormatter())


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


# Where a label may sit around its point (offset in points, alignment), nearest first.
_SPOTS = [(6, 3, "left", "bottom"), (6, -3, "left", "top"), (-6, 3, "right", "bottom"),
          (-6, -3, "right", "top"), (0, 7, "center", "bottom"), (0, -7, "center", "top"),
          (6, 13, "left", "bottom"), (6, -13, "left", "top"), (-6, 13, "right", "bottom"),
          (-6, -13, "right", "top"), (0, 19, "center", "bottom"), (0, -19, "center", "top")]


def _label_points(ax, xy: list[tuple[float, float]], labels: list[str], colours: list) -> None:
    """Label every point; points drawn on top of each other share one label, and each label takes
    the first spot around its point that overlaps no other label, no point and stays in the axes."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()  # final limits and a renderer to measure text with
    renderer = fig.canvas.get_renderer()
    screen = ax.transData.transform(xy)
    groups: list[list[int]] = []
    for i in sorted(range(len(xy)), key=lambda i: tuple(screen[i])):
        near = next((g for g in groups if any(abs(screen[i] - screen[j]).max() < 9 for j in g)), None)
        if near is None:
            groups.append([i])
        else:
            near.append(i)
    pad = 6  # pixels around a marker
    points = [Bbox.from_extents(x - pad, y - pad, x + pad, y + pad) for x, y in screen]
    frame = ax.get_window_extent(renderer)
    placed: list = []
    for group in groups:
        texts = list(dict.fromkeys(labels[i] for i in group))
        same = len({str(colours[i]) for i in group}) == 1
        anchor = xy[group[0]]
        best = None
        for dx, dy, ha, va in _SPOTS:
            note = ax.annotate("\n".join(texts), anchor, xytext=(dx, dy), textcoords="offset points", ha=ha,
                               va=va, fontsize=7, color=colours[group[0]] if same else "black")
            box = note.get_window_extent(renderer)
            clashes = (sum(_boxes_overlap(box, b) for b in placed)
                       + sum(_boxes_overlap(box, points[j]) for j in range(len(points)) if j not in group)
                       + (not (frame.x0 <= box.x0 and box.x1 <= frame.x1
                               and frame.y0 <= box.y0 and box.y1 <= frame.y1)))
            if best is None or clashes < best[0]:
                if best is not None:
                    best[1].remove()
                best = (clashes, note, box)
            else:
                note.remove()
            if clashes == 0:
                break
        placed.append(best[2])


def plot_all(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return []
    paths = []
    b1 = min(r["batch_size"] for r in ok)
    pts = [r for r in ok if r["batch_size"] == b1]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    xy = [(r["latency_ms_p50"], 100 * r["accuracy"]) for r in pts]
    runs = sorted({r["run"] for r in pts})
    kinds = sorted({(r["precision"], r["backend"]) for r in pts})
    markers = "osD^v<>PXh*"
    colours = plt.get_cmap("tab10")
    # Colour = run directory, marker = precision x backend; each label says the latter in the run's colour.
    point_colours = [colours(runs.index(r["run"]) % 10) for r in pts]
    for r, (x, y), colour in zip(pts, xy, point_colours):
        ax.scatter(x, y, color=colour, marker=markers[kinds.index((r["precision"], r["backend"])) % len(markers)],
                   s=40, zorder=3)
    front = pareto(xy)
    ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "k--", lw=1, zorder=2)
    handles = [plt.Line2D([], [], color=colours(i % 10), marker="o", ls="", label=run) for i, run in enumerate(runs)]
    handles += [plt.Line2D([], [], color="grey", marker=markers[i % len(markers)], ls="", label=f"{p} [{b}]")
                for i, (p, b) in enumerate(kinds)]
    handles.append(plt.Line2D([], [], color="k", ls="--", label="Pareto front"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set(xscale="log", xlabel=f"p50 latency at batch {b1} (ms, log scale)", ylabel="test accuracy (%)",
           title="accuracy vs latency")
    ax.margins(x=0.12, y=0.12)  # room for the labels of the outermost points
    _plain_log_ticks(ax.xaxis)
    ax.grid(alpha=0.3)
    ax.grid(alpha=0.1, which="minor")
    fig.tight_layout()
    _label_points(ax, xy, [f"{r['precision']} [{r['backend']}]" for r in pts], point_colours)
    paths.append(out / "accuracy_vs_latency.png")
    _save(fig, paths[-1])

    sizes = {r["variant"]: r["size_bytes"] for r in ok}
    scale, unit = (1e6, "MB") if max(sizes.values()) >= 1e6 else (1e3, "kB")
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(sizes) + 1.5))
    bars = ax.barh(list(sizes), [v / scale for v in sizes.values()])
    ax.bar_label(bars, fmt="%.3g", padding=3, fontsize=8)
    ax.invert_yaxis()  # first variant on top, as in the tables
    ax.margins(x=0.15)
    ax.set(xlabel=f"file size ({unit})", title="size per variant")
    paths.append(out / "size.png")
    _save(fig, paths[-1])

    series = sorted({(r["variant"], r["backend"]) for r in ok})
    palette = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for i, key in enumerate(series):
        points = sorted((r["batch_size"], r["throughput_ips"]) for r in ok if (r["variant"], r["backend"]) == key)
        ax.plot([b for b, _ in points], [t for _, t in points], marker="o", color=palette(i % palette.N),
                label=f"{key[0]} [{key[1]}]")
    batches = sorted({r["batch_size"] for r in ok})
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images / s", title="throughput vs batch size")
    ax.set_xticks(batches, [str(b) for b in batches])  # the batch sizes measured, not powers of ten
    ax.xaxis.set_minor_locator(NullLocator())
    _plain_log_ticks(ax.yaxis)
    ax.grid(alpha=0.3)
    ax.grid(alpha=0.1, which="minor")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the lines, never on them
    paths.append(out / "throughput_vs_batch.png")
    _save(fig, paths[-1])
    return paths
