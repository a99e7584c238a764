"""curves.png: loss and accuracy per epoch, train and test."""

from __future__ import annotations

import os


def plot_curves(history: list[dict], path: str | os.PathLike, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from cnndeploy.fileio import atomic_path

    epochs = [h["epoch"] for h in history]
    style = {"marker": "o", "ms": 6 if len(history) <= 20 else 3}
    best = max(history, key=lambda h: h["test_accuracy"])
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train (with label smoothing)", **style)
    ax_loss.plot(epochs, [h["test_loss"] for h in history], label="test (plain)", **style)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], label="train", **style)
    if len(history) == 1:  # one dot per line draws no curve: print each value beside its dot
        ax_acc.plot(epochs, [100 * h["test_accuracy"] for h in history], label="test", **style)
        _label_lone_points(ax_loss, "{:.3f}")
        _label_lone_points(ax_acc, "{:.2f}%")
    else:  # the best epoch in the legend, where no line can run through its label
        ax_acc.plot(epochs, [100 * h["test_accuracy"] for h in history], **style,
                    label=f"test (best {100 * best['test_accuracy']:.2f}%, epoch {best['epoch']})")
        ax_acc.plot([best["epoch"]], [100 * best["test_accuracy"]], marker="o", ms=12, mfc="none",
                    color="black", ls="")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="top-1 accuracy")
    for ax in (ax_loss, ax_acc):
        if len(epochs) <= 12:  # whole epochs only, not 0.96 ... 1.04
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _label_lone_points(ax, fmt: str) -> None:
    for line in ax.get_lines():
        x, y = line.get_xdata()[0], line.get_ydata()[0]
        ax.annotate(fmt.format(y), (x, y), textcoords="offset points", xytext=(8, 0), va="center",
                    color=line.get_color())
        ax.set_xlim(x - 0.5, x + 0.5)
    ax.margins(y=0.15)  # keep the dots and their labels off the frame


def curves_title(model: str, dataset: str, source: str, *, pruned: bool = False,
                 teacher: str | None = None) -> str:
    """What the run is: a pruned model's fine-tune says so, and names its teacher when distilled."""
    title = f"{model} on {dataset} ({source})"
    if pruned:
        title = f"fine-tune of pruned {title}"
    if teacher:
        title += f", distilled from {os.path.basename(os.path.normpath(teacher))}"
    return title
