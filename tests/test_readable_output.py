"""What a person reads: the plots' labels and ticks, and the bench's progress without a bar."""

from __future__ import annotations

import json
import logging
import random

import pytest

from cnndeploy.cli import main


@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures the plotting code closes, kept open to be inspected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept: list = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    for fig in kept:
        close(fig)


def _history(epochs: int) -> list[dict]:
    return [{"epoch": e, "train_loss": 2.0 / e, "test_loss": 1.0 / e, "train_accuracy": 0.4 + 0.1 * e,
             "test_accuracy": 0.78 + 0.02 * e} for e in range(1, epochs + 1)]


def _tick_labels(fig, axis: str) -> list[str]:
    fig.canvas.draw()
    return [t.get_text() for ax in fig.axes for t in getattr(ax, f"get_{axis}ticklabels")() if t.get_text()]


def test_one_epoch_curves_show_whole_epochs_and_print_each_value(figures, tmp_path):
    from cnndeploy.train.curves import plot_curves

    plot_curves(_history(1), tmp_path / "curves.png", "lenet5 on mnist (mnist-idx)")
    fig = figures[0]
    assert _tick_labels(fig, "x") == ["1", "1"]  # not 0.96 ... 1.04
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"2.000", "1.000", "50.00%", "80.00%"} <= texts  # two lone dots per panel, each labelled


def test_longer_curves_name_the_best_epoch_in_the_legend(figures, tmp_path):
    from cnndeploy.train.curves import plot_curves

    plot_curves(_history(4), tmp_path / "curves.png", "t")
    fig = figures[0]
    assert set(_tick_labels(fig, "x")) == {"1", "2", "3", "4"}
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "test (best 86.00%, epoch 4)" in legend


def test_a_pruned_runs_fine_tune_curves_say_so(figures, tmp_path):
    from test_train import _png_tree

    from cnndeploy.train.fit import TrainConfig, train

    data = _png_tree(tmp_path / "pets", 32)
    train(TrainConfig(model="lenet5", dataset=str(data), out=str(tmp_path / "run"), epochs=1, batch_size=8,
                      device="cpu", widths={"conv": [3, 8], "fc": [60, 42]}), progress=False)
    titles = [fig._suptitle.get_text() for fig in figures if fig._suptitle is not None]
    assert titles == ["fine-tune of pruned lenet5 on pets (image-folder)"]


def _bench_rows() -> list[dict]:
    rng = random.Random(0)
    rows = []
    for run, accuracy in (("lenet5-mnist", 0.983), ("lenet5-mnist-pruned50", 0.972)):
        for precision, backend in (("fp32", "torch"), ("fp32", "ort"), ("fp16", "ort"), ("int8-cpu", "ort")):
            for batch in (1, 32, 256):
                latency = 0.04 * (1 + 10 * rng.random())
                rows.append({"status": "ok", "run": run, "variant": f"{run}:{precision}", "backend": backend,
                             "precision": precision, "batch_size": batch, "latency_ms_p50": latency,
                             "accuracy": accuracy, "size_bytes": rng.randint(30_000, 270_000),
                             "throughput_ips": 1000 * batch / latency})
    return rows


def test_bench_plots_label_every_point_with_plain_ticks_and_keep_legends_off_the_lines(figures, tmp_path):
    from cnndeploy.bench.plots import plot_all

    paths = plot_all(_bench_rows(), tmp_path)
    assert [p.name for p in paths] == ["accuracy_vs_latency.png", "size.png", "throughput_vs_batch.png"]
    accuracy, _, throughput = figures
    labelled = "\n".join(t.get_text() for t in accuracy.axes[0].texts)
    for precision, backend in (("fp32", "torch"), ("fp32", "ort"), ("fp16", "ort"), ("int8-cpu", "ort")):
        # all 8 points: each run's 4 kinds (points on top of each other share one label)
        assert labelled.count(f"{precision} [{backend}]") == 2
    for fig in (accuracy, throughput):
        labels = _tick_labels(fig, "x") + _tick_labels(fig, "y")
        assert labels and not [t for t in labels if "$" in t or "10^" in t or "times" in t], labels
    assert _tick_labels(throughput, "x") == ["1", "32", "256"]
    for fig in (accuracy, throughput):
        ax = fig.axes[0]
        fig.canvas.draw()
        legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.x0 >= frame.x1  # beside the axes, covering nothing


def test_bench_without_progress_bars_says_what_it_measures(mini_mnist, tmp_path, caplog):
    from test_reliability import tiny_run

    run = tiny_run(tmp_path)
    with caplog.at_level(logging.INFO, logger="cnndeploy"):
        assert main(["bench", str(run), "--backends", "torch", "--batch-sizes", "1", "--min-seconds", "0.01",
                     "--out", str(tmp_path / "bench"), "--data-dir", str(mini_mnist), "--no-progress"]) == 0
    assert "bench 1/1: run:fp32 [torch]" in [r.getMessage() for r in caplog.records]
    assert json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"][0]["status"] == "ok"
