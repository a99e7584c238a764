"""`cnndeploy optimize`: validation split, budget, fallback, QAT, lineage and the time budget, on LeNet-5."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from cnndeploy.artifacts import files as layout
from cnndeploy.artifacts import records
from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.records import Candidate, OptimizeRecord
from cnndeploy.artifacts.variants import discover
from cnndeploy.cli import main
from cnndeploy.data import dataset_for
from cnndeploy.data.holdout import Holdout
from cnndeploy.errors import CnnDeployError
from cnndeploy.optimize import OptimizeConfig, optimize_run, parse_duration
from cnndeploy.optimize.report import explain
from cnndeploy.optimize.search import Search
from cnndeploy.runtime.classifier import Classifier

from conftest import HELD_OUT as HOLDOUT
FAST = dict(min_seconds=0.05, calib_size=128, threads=1, distill="off", qat_epochs=0)


@pytest.fixture(scope="module")
def parent(held_out_lenet: Path) -> Path:
    return held_out_lenet


@pytest.fixture(scope="module")
def searched(parent, mini_mnist) -> tuple[Path, OptimizeRecord]:
    out = parent.parent / "searched"
    record = optimize_run(parent, OptimizeConfig(max_drop=0.5, amounts=(0.5,), **FAST), out=out,
                          data_dir=str(mini_mnist), progress=False)
    return out, record


def test_validation_split_is_seeded_held_out_and_never_the_test_split(parent, mini_mnist):
    h = Holdout(HOLDOUT, 0)
    assert np.array_equal(h.indices(10_000), Holdout(HOLDOUT, 0).indices(10_000))
    assert not np.array_equal(h.indices(10_000), Holdout(HOLDOUT, 1).indices(10_000))
    card = ModelCard.read(parent)
    ds = dataset_for(card, data_dir=str(mini_mnist))
    rest, vx, vy = h.split(ds)
    idx = h.indices(len(ds.train_y))
    assert len(np.unique(idx)) == HOLDOUT and len(rest.train_y) == len(ds.train_y) - HOLDOUT
    assert np.array_equal(vx, ds.train_x[idx]) and np.array_equal(vy, ds.train_y[idx])   # from train, not test
    kept = np.setdiff1d(np.arange(len(ds.train_y)), idx)
    assert np.array_equal(rest.train_x, ds.train_x[kept])   # training never sees them
    assert json.loads((parent / "metrics.json").read_text())["train_images"] == len(ds.train_y) - HOLDOUT
    with pytest.raises(CnnDeployError, match="at most half"):
        Holdout(6000).indices(10_000)


def test_search_chooses_within_budget_and_reports_test_only_for_finalists(searched):
    out, r = searched
    assert r.validation["size"] == HOLDOUT and "held out of training" in r.validation["source"]
    chosen = next(c for c in r.candidates if c.name == r.chosen)
    assert chosen.within_budget and chosen.val_drop_points <= 0.5 and chosen.file != layout.WEIGHTS
    assert all(c.within_budget for c in r.candidates if c.test_accuracy is not None)
    over = [c for c in r.candidates if c.within_budget is False]
    assert all(c.name != r.chosen for c in over)
    assert chosen.test_accuracy is not None and chosen.speedup_vs_reference
    assert {c.stage for c in r.candidates} >= {"p0", "p50"}
    assert all(c.reason for c in r.candidates if c.name != r.chosen)
    again = OptimizeRecord.read(out)
    assert again.chosen == r.chosen and len(again.candidates) == len(r.candidates)
    text = (out / layout.OPTIMIZE_MD).read_text()
    assert "**Chosen:" in text and r.chosen in text and (out / layout.PARETO).stat().st_size > 10_000


def test_best_onnx_carries_lineage_and_is_a_variant_like_any_other(searched, parent, mini_mnist):
    out, r = searched
    meta = {p.key: p.value for p in onnx.load(str(out / layout.BEST)).metadata_props}
    lineage = json.loads(meta[layout.LINEAGE_KEY])
    chosen = next(c for c in r.candidates if c.name == r.chosen)
    assert lineage["source_run"] == str(parent.resolve()) and lineage["candidate"] == r.chosen
    assert lineage["max_drop_points"] == 0.5 and lineage["val_drop_points"] == chosen.val_drop_points
    assert lineage["prune_amount"] == chosen.prune_amount and lineage["backend"] == chosen.backend
    card = ModelCard.from_onnx_props(meta, str(out / layout.BEST))
    assert card.classes == ModelCard.read(parent).classes and ModelCard.read(out).classes == card.classes
    assert [v.spec.name for v in discover(out)] == [layout.BEST]
    x = np.zeros((3, 1, 28, 28), np.float32)
    assert Classifier(out / layout.BEST).logits(x).shape == (3, 10)
    assert main(["bench", str(out), "--backends", "ort", "--batch-sizes", "2", "--min-seconds", "0.05",
                 "--out", str(out.parent / "bench-best"), "--no-progress"]) == 0


def test_an_existing_result_is_never_overwritten(searched, parent, mini_mnist):
    out, _ = searched
    before = (out / layout.BEST).read_bytes()
    with pytest.raises(CnnDeployError, match="already holds an optimize result"):
        optimize_run(parent, OptimizeConfig(max_drop=0.5, amounts=(), **FAST), out=out, data_dir=str(mini_mnist))
    assert (out / layout.BEST).read_bytes() == before


def test_reuse_copies_the_fine_tune_and_rebuilds_its_files(searched, parent, mini_mnist, tmp_path):
    """--reuse skips the fine-tune, but the ONNX files are exported again: an exporter fix reaches them."""
    import shutil

    earlier = tmp_path / "earlier"
    shutil.copytree(searched[0], earlier)
    old = earlier / layout.OPTIMIZE_WORK / "p50"
    (old / layout.ONNX).write_bytes(b"stale export")
    r = optimize_run(parent, OptimizeConfig(max_drop=0.5, amounts=(0.5,), **FAST, reuse=str(earlier)),
                     out=tmp_path / "again", data_dir=str(mini_mnist), progress=False)
    new = tmp_path / "again" / layout.OPTIMIZE_WORK / "p50"
    assert r.validation["reused"] == [str(old)]
    assert (new / layout.WEIGHTS).read_bytes() == (old / layout.WEIGHTS).read_bytes()
    onnx.checker.check_model(onnx.load(str(new / layout.ONNX)))
    assert {c.stage for c in r.candidates} >= {"p0", "p50"}
    # a fine-tune made with other options is not the one asked for: made again, not copied
    r = optimize_run(parent, OptimizeConfig(max_drop=0.5, amounts=(0.5,), **{**FAST, "distill": "on"},
                                            reuse=str(earlier)),
                     out=tmp_path / "distilled", data_dir=str(mini_mnist), progress=False)
    assert "reused" not in r.validation
    assert records.PruneRecord.read(tmp_path / "distilled" / layout.OPTIMIZE_WORK / "p50").finetune_teacher


def _int8_misses(monkeypatch, factor: float = 20.0, loss: float = 0.05) -> None:
    """A test double of the measurement: the plain INT8 files of the unpruned stage measure `factor`x
    faster and `loss` less accurate than they are, so INT8 misses the budget while being the fastest,
    the case fallback and QAT exist for. Fallback and QAT files are measured as they are."""
    real = Search._candidate

    def candidate(self, stage, row):
        c = real(self, stage, row)
        if c.precision.startswith("int8") and not c.excluded_nodes and stage.name == "p0" and c.status == "ok":
            c.throughput_ips *= factor
            c.val_accuracy -= loss
            self._judge(c)
        return c
    monkeypatch.setattr(Search, "_candidate", candidate)


def _weights_in_float(path: Path) -> dict[str, bool]:
    """Conv/Gemm node -> whether its weight is a plain float initializer (not fed by DequantizeLinear)."""
    g = onnx.load(str(path)).graph
    producer = {o: n for n in g.node for o in n.output}
    return {n.name: not (n.input[1] in producer and producer[n.input[1]].op_type == "DequantizeLinear")
            for n in g.node if n.op_type in ("Conv", "Gemm")}


def test_fallback_keeps_the_reported_layers_in_float_until_within_budget(parent, mini_mnist, monkeypatch):
    _int8_misses(monkeypatch)
    out = parent.parent / "fallback"
    r = optimize_run(parent, OptimizeConfig(max_drop=0.5, amounts=(), **FAST), out=out, data_dir=str(mini_mnist),
                     progress=False)
    ranked = [e["node"] for e in r.sensitivity["p0"]]
    assert ranked and all(np.isfinite(e["sqnr_db"]) for e in r.sensitivity["p0"])
    steps = r.fallback[0]["steps"]
    assert steps, r.fallback
    for i, step in enumerate(steps, 1):
        assert step["excluded"] == ranked[:i]           # the most sensitive first, one more per step
        in_float = _weights_in_float(out / layout.OPTIMIZE_WORK / "p0" / step["file"])
        assert {n for n, f in in_float.items() if f} == set(step["excluded"])
    assert "within budget" in r.fallback[0]["outcome"]
    chosen = next(c for c in r.candidates if c.name == r.chosen)
    fb = [c for c in r.candidates if c.excluded_nodes]
    assert fb and all(c.excluded_nodes == steps[len(c.excluded_nodes) - 1]["excluded"] for c in fb)
    assert chosen.within_budget


def test_qat_runs_where_fallback_cannot_and_records_what_it_recovered(parent, mini_mnist, monkeypatch):
    _int8_misses(monkeypatch)
    out = parent.parent / "qat"
    cfg = OptimizeConfig(max_drop=0.5, amounts=(), **{**FAST, "qat_epochs": 1}, max_fallback=0)
    r = optimize_run(parent, cfg, out=out, data_dir=str(mini_mnist), progress=False)
    assert len(r.qat) == 1 and r.qat[0]["epochs"] == 1 and r.qat[0]["from"] == "p0"
    assert r.qat[0]["qat_val_drop_points"] is not None and r.qat[0]["recovered_points"] is not None
    qat = [c for c in r.candidates if c.stage == "p0-qat"]
    assert qat and all(c.qat_epochs == 1 and c.status == "ok" for c in qat)
    assert (out / layout.OPTIMIZE_WORK / "p0-qat" / layout.QUANT_TARGETS["cpu"]).is_file()


def test_the_deadline_keeps_room_and_refuses_what_it_cannot_estimate():
    from cnndeploy.optimize.config import Deadline

    unlimited = Deadline(None)
    assert unlimited.allows(None, "x") and unlimited.allows(1e9, "x", keep=1e9) and not unlimited.skipped
    d = Deadline(100)
    assert d.allows(60, "a", keep=30) and not d.skipped
    assert not d.allows(60, "b", keep=50)
    assert d.skipped[-1].startswith("b: not tried") and "kept for the finalists" in d.skipped[-1]
    assert not d.allows(None, "c") and "could not be estimated" in d.skipped[-1]


def test_qat_is_not_started_under_a_budget_when_its_cost_is_unknown(parent, mini_mnist, monkeypatch, tmp_path):
    """Without epoch times in the parent's log.jsonl a QAT epoch cannot be estimated: under a time budget it
    is listed as not tried, instead of judged as costing nothing."""
    import shutil

    _int8_misses(monkeypatch)
    bare = tmp_path / "no-times"
    shutil.copytree(parent, bare, ignore=shutil.ignore_patterns(layout.LOCK))
    rows = [json.loads(line) for line in (bare / layout.LOG).read_text().splitlines()]
    (bare / layout.LOG).write_text("".join(json.dumps({k: v for k, v in r.items() if k != "seconds"}) + "\n"
                                           for r in rows))
    cfg = OptimizeConfig(max_drop=0.5, amounts=(), **{**FAST, "qat_epochs": 1}, max_fallback=0, time_budget=900)
    r = optimize_run(bare, cfg, out=tmp_path / "o", data_dir=str(mini_mnist), progress=False)
    assert not r.qat and not any(c.stage.endswith("-qat") for c in r.candidates)
    assert [s for s in r.skipped if s.startswith("p0: QAT") and "could not be estimated" in s]


def test_a_too_small_time_budget_ends_with_the_best_so_far(parent, mini_mnist, tmp_path, capsys):
    out = tmp_path / "budget"
    code = main(["optimize", str(parent), "--max-drop", "0.5", "--time-budget", "1s", "--amounts", "0.3,0.5",
                 "--distill", "off", "--qat-epochs", "0", "--min-seconds", "0.05", "--threads", "1",
                 "--data-dir", str(mini_mnist), "--out", str(out), "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0 and "Traceback" not in printed.err
    assert "the time budget (1 s) ended the search" in printed.out and "chose p0:" in printed.out
    r = OptimizeRecord.read(out)
    assert not r.finished and any("p30" in s for s in r.skipped) and any("p50" in s for s in r.skipped)
    assert (out / layout.BEST).is_file()


def test_a_fine_tune_that_cannot_fit_is_not_started(parent, mini_mnist, tmp_path):
    """The first pruned amount is judged by the parent's epoch time before its fine-tune starts."""
    import shutil

    slow = tmp_path / "slow-parent"
    shutil.copytree(parent, slow, ignore=shutil.ignore_patterns(layout.LOCK))
    rows = [json.loads(line) for line in (slow / layout.LOG).read_text().splitlines()]
    (slow / layout.LOG).write_text("".join(json.dumps({**r, "seconds": 1800.0}) + "\n" for r in rows))
    r = optimize_run(slow, OptimizeConfig(max_drop=0.5, amounts=(0.3,), time_budget=300, **FAST),
                     out=tmp_path / "o", data_dir=str(mini_mnist), progress=False)
    assert not r.finished and r.elapsed_s < 300
    assert [s for s in r.skipped if s.startswith("p30") and "expected to take about" in s]
    assert {c.stage for c in r.candidates} == {"p0"} and r.chosen.startswith("p0:")
    # stopped by an estimate, not by the clock: the room left still times every finalist side by side
    assert not [s for s in r.skipped if s.startswith("final side-by-side")]
    assert len([c for c in r.candidates if c.final_throughput_ips and c.file != layout.WEIGHTS]) > 1


@pytest.mark.parametrize("argv, message", [
    (["--max-drop", "-1"], "--max-drop"),
    (["--max-drop", "0.5", "--time-budget", "soon"], "--time-budget"),
    (["--max-drop", "0.5", "--amounts", "0.5,1.5"], "--amounts"),
    (["--max-drop", "0.5", "--backends", "ort,warp"], "--backends"),
])
def test_bad_options_are_one_clear_error(parent, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        code = main(["optimize", str(parent), *argv, "--out", str(tmp_path / "x")])
        raise SystemExit(code)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_not_a_run_directory_is_one_line(tmp_path, capsys):
    assert main(["optimize", str(tmp_path), "--max-drop", "0.5", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.json" in err


def test_durations():
    assert parse_duration("30m") == 1800 and parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    assert parse_duration("45") == 45
    with pytest.raises(CnnDeployError):
        parse_duration("0m")


def _row(name: str, stage: str, amount: float, file: str, precision: str, ips: float, final: float | None = None,
         **kw) -> Candidate:
    return Candidate(name=name, stage=stage, prune_amount=amount, file=file, backend="openvino", precision=precision,
                     status="ok", val_drop_points=0.1, within_budget=True, throughput_ips=ips, spread=0.01,
                     final_throughput_ips=final, final_spread=0.01 if final else None, macs=100, **kw)


def test_why_lost_never_blames_the_chosen_file_and_trusts_the_finalists_run():
    # p30's stage run was slower than p0's (noise); the finalists' run, side by side, says it is faster
    p0 = _row("p0:model.onnx@openvino", "p0", 0.0, layout.ONNX, "fp32", 1000, final=900)
    p30 = _row("p30:model.onnx@openvino", "p30", 0.3, layout.ONNX, "fp32", 950, final=1400)
    p50 = _row("p50:model.onnx@openvino", "p50", 0.5, layout.ONNX, "fp32", 980)    # not a finalist
    p70 = _row("p70:model.onnx@openvino", "p70", 0.7, layout.ONNX, "fp32", 1500, final=1000)
    slow8 = _row("p0:model.int8.onnx@openvino", "p0", 0.0, layout.QUANT_TARGETS["cpu"], "int8", 700, final=1300)
    staged = _row("p0:model.safetensors@openvino", "p0", 0.0, layout.WEIGHTS, "fp32", 800)    # not a finalist
    search = SimpleNamespace(candidates=[p0, p30, p50, p70, slow8, staged], quant_target="cpu",
                             cfg=SimpleNamespace(max_drop=0.5))
    lines = explain(search, p30)
    assert p30.reason is None and not any(line.startswith(p30.name) for line in lines)
    assert p50.reason.startswith("pruned but no faster") and "0.98x" in p50.reason      # stage runs: 980 vs 1000
    assert p70.reason.startswith("within budget but slower")      # 1500 in its stage run, 1000 beside p30
    assert slow8.reason.startswith("within budget but slower")    # 700 vs 1000 staged, 1300 vs 900 side by side
    assert p0.reason == "within budget but slower: 900 vs 1400 images/s for the chosen file"
    # no side-by-side figure for it: the chosen file's stage-run figure, and the reason says which
    assert staged.reason == "within budget but slower: 800 vs 950 images/s for the chosen file in the stage runs"


def test_a_speed_tie_in_the_finalists_run_goes_to_the_more_accurate_file():
    from cnndeploy.optimize.finalists import pick

    fast = _row("p30:model.onnx@openvino", "p30", 0.3, layout.ONNX, "bf16", 980, final=1030, val_accuracy=0.9878)
    exact = _row("p0:model.onnx@openvino", "p0", 0.0, layout.ONNX, "bf16", 950, final=1000, val_accuracy=0.9898)
    slow = _row("p0:model.int8.onnx@openvino", "p0", 0.0, layout.QUANT_TARGETS["cpu"], "int8", 600, final=600,
                val_accuracy=0.9990)
    fast.final_spread = exact.final_spread = 0.05      # 3% apart in a run with a 5% spread: no difference
    assert pick([fast, exact, slow]) is exact
    fast.final_spread = exact.final_spread = 0.01      # 3% apart beyond a 1% spread: the faster one
    assert pick([fast, exact, slow]) is fast
    fast.final_spread = exact.final_spread = 0.05
    search = SimpleNamespace(candidates=[fast, exact, slow], quant_target="cpu", cfg=SimpleNamespace(max_drop=0.5))
    fast.val_drop_points, exact.val_drop_points = 0.2, 0.0
    explain(search, exact)
    assert fast.reason.startswith("pruned but no faster")   # beside the unpruned file it ties with
    # an unpruned file that ties (another backend, say): the reason names the tie and the accuracy
    fast.reason, fast.prune_amount, fast.stage = None, 0.0, "p0"
    explain(search, exact)
    assert fast.reason.startswith("no faster than the chosen file beyond the rounds' spread") and "+0.20 vs +0.00" \
        in fast.reason
