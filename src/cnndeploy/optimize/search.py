"""`cnndeploy optimize RUN_DIR --max-drop X`: the fastest file within an accuracy budget, measured here.

The search, in order:
1. A validation split: the one `train --holdout` kept out of training, else a seeded one carved
   from the training split (recorded, with a warning that the parent saw those images). Every
   decision reads validation accuracy of the exact file on the exact backend; the test split
   is measured once, on the finalists, and only reported.
2. The unpruned model: FP32 PyTorch eager (the reference for accuracy and speed), its ONNX file
   and INT8 file on every backend of the target (plus compute precisions such as OpenVINO's bf16).
3. Pruning amounts in increasing order, each fine-tuned (with distillation where that measured
   better). A larger amount is cut when a smaller one already misses the budget in every form,
   or when the smaller one was no faster than the one before it.
4. Where an INT8 file misses the budget but is faster than the float files: layers ranked by
   their quantization error, kept in float one at a time (fallback), then QAT.
5. The finalists timed again in one interleaved run beside the reference, with test accuracy;
   the fastest within budget is copied to DIR/best.onnx with its lineage in the metadata.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cnndeploy.artifacts import files as layout
from cnndeploy.artifacts import lock, records
from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.files import FileSpec, spec
from cnndeploy.artifacts.records import BenchRow, Candidate, OptimizeRecord
from cnndeploy.artifacts.variants import Variant
from cnndeploy.bench.harness import BenchConfig, time_variants
from cnndeploy.data import dataset_for
from cnndeploy.data.holdout import Holdout
from cnndeploy.errors import CnnDeployError
from cnndeploy.optimize.config import QUANT_TARGET, Deadline, OptimizeConfig
from cnndeploy.optimize.stages import Stage, copy_parent, ensure_onnx, make_int8, prune_stage, stage_name

log = logging.getLogger("cnndeploy")
FINALISTS = 4          # fastest within budget timed again side by side (plus the reference)
REFERENCE = "the reference (FP32 PyTorch eager), not a deployable file"
DEFAULT_VAL = 5000     # validation images carved from train when the run kept none out (at most 10%)


def optimize_run(run_dir: str | os.PathLike, cfg: OptimizeConfig, *, out: str | os.PathLike,
                 data_dir: str | None = None, progress: bool = True) -> OptimizeRecord:
    """Search RUN_DIR's pruned / quantized / float variants on the target's backends; write OUT."""
    cfg.check()
    parent, out = Path(run_dir), Path(out)
    card = ModelCard.read(parent)
    if (out / layout.OPTIMIZE).exists() or (out / layout.BEST).exists():
        raise CnnDeployError(f"{out} already holds an optimize result; choose another --out "
                             "(nothing was overwritten)")
    if out.resolve() == parent.resolve():
        raise CnnDeployError(f"--out {out} is RUN_DIR itself; optimize never writes into the run it searches")
    with lock.writing(out, command="cnndeploy optimize", what="--out"):
        return Search(parent, card, cfg, out, data_dir, progress).run()


class Search:
    def __init__(self, parent: Path, card: ModelCard, cfg: OptimizeConfig, out: Path, data_dir: str | None,
                 progress: bool) -> None:
        self.parent, self.card, self.cfg, self.out, self.data_dir, self.progress = (
            parent, card, cfg, out, data_dir, progress)
        self.deadline = Deadline(cfg.time_budget)
        self.backends = cfg.resolved_backends()
        self.quant_target = QUANT_TARGET[cfg.target]
        self.candidates: list[Candidate] = []
        self.stages: dict[str, Stage] = {}
        self.sensitivity: dict[str, list[dict]] = {}
        self.fallback: list[dict] = []
        self.qat: list[dict] = []
        self.costs: dict[str, dict] = {}
        self.reference: Candidate | None = None
        self.measure_cost = 0.0   # seconds measuring the unpruned stage took
        self.work = out / layout.OPTIMIZE_WORK

    # --- set-up -----------------------------------------------------------------------------

    def _holdout(self, n_train: int) -> tuple[Holdout, dict[str, Any]]:
        config = records.read_metrics(self.parent).get("config", {})
        size, seed = config.get("holdout", 0), config.get("holdout_seed", 0)
        if size and (self.cfg.val_size in (None, size)):
            return Holdout(size, seed), {"size": size, "seed": seed, "source": "held out of training by "
                                         "`train --holdout`: the parent never saw these images"}
        size = self.cfg.val_size or min(DEFAULT_VAL, n_train // 10)
        log.warning("%s kept no validation images out of training (train --holdout N): optimize carves %d "
                    "from the training split, which the parent trained on, so validation accuracies are "
                    "optimistic; the fine-tunes and QAT here do not see them", self.parent, size)
        return Holdout(size, self.cfg.val_seed), {
            "size": size, "seed": self.cfg.val_seed,
            "source": "carved from the training split by optimize (the parent trained on these images; "
                      "the fine-tunes and QAT of this search did not)"}

    def run(self) -> OptimizeRecord:
        from cnndeploy.quant.calibration import calibration_images

        ds = dataset_for(self.card, data_dir=self.data_dir)
        self.holdout, self.validation = self._holdout(len(ds.train_y))
        rest, vx, vy = self.holdout.split(ds)
        self.val = dataclasses.replace(ds, test_x=vx, test_y=vy)   # the split every decision reads
        self.test = ds
        self.calib = calibration_images(self.card, size=self.cfg.calib_size, seed=self.cfg.seed, ds=rest)
        log.info("optimize %s: budget %.2f points on %d validation images, batch %d, backends %s",
                 self.parent, self.cfg.max_drop, len(vy), self.cfg.batch_size, ",".join(self.backends))
        amounts = sorted(set(self.cfg.amounts))
        self.bar = tqdm(total=2 + len(amounts), desc="optimize", unit="stage", disable=None if self.progress else True)
        finished = True
        try:
            self._search(amounts)
        except _OutOfTime:
            finished = False
        self.bar.close()
        return self._finish(finished)

    def _search(self, amounts: list[float]) -> None:
        p0 = self._new_stage(0.0)
        copy_parent(self.parent, p0.run)
        t0 = time.perf_counter()
        self._measure_stage(p0, reference=True)
        # what measuring a stage costs; the finalists' run at the end is held to about as much again
        self.measure_cost = time.perf_counter() - t0
        self._rescue(p0)
        self.bar.update(1)
        best_before = self._best(p0.name)
        # the next stage is expected to cost what the last one did (fine-tune + measuring: more pruning
        # costs less, so this errs long); the first, what the parent's log says (_finetune_estimate)
        next_cost = self._stage_estimate(amounts[0], self.measure_cost) if amounts else None
        for i, amount in enumerate(amounts):
            name = stage_name(amount)
            if next_cost is not None and not self.deadline.allows(next_cost, f"{name} (pruning {amount:.0%})",
                                                                  keep=self.measure_cost):
                self._skip_rest(amounts[i + 1:], "the time budget ended the search before it")
                raise _OutOfTime
            if self.deadline.left() <= 0:
                self.deadline.skip(f"{name} (pruning {amount:.0%}): not tried, the time budget was spent")
                self._skip_rest(amounts[i + 1:], "the time budget was spent")
                raise _OutOfTime
            t0 = time.perf_counter()
            stage = self._prune(amount)
            self.bar.update(1)
            if stage is None:
                continue
            self._measure_stage(stage)
            self._rescue(stage)
            next_cost = time.perf_counter() - t0 - stage.trial_seconds
            if stage.reused and i + 1 < len(amounts):   # a copy cost nothing; the next fine-tune will
                next_cost = self._stage_estimate(amounts[i + 1], next_cost)
            best = self._best(stage.name)
            if best is None:
                self._skip_rest(amounts[i + 1:], f"{name} already misses the budget in every precision and "
                                f"backend; more pruning removes more")
                return
            if best_before is not None and best.throughput_ips <= best_before.throughput_ips * (
                    1 + max(best.spread or 0, best_before.spread or 0)):
                self._skip_rest(amounts[i + 1:], f"pruning stopped paying: {name}'s fastest within budget "
                                f"({best.throughput_ips:.0f} images/s) is no faster than {best_before.stage}'s "
                                f"({best_before.throughput_ips:.0f} images/s) beyond the rounds' spread")
                return
            best_before = best

    def _stage_estimate(self, amount: float, measuring: float) -> float | None:
        """Seconds the stage at `amount` is expected to take: its fine-tune and `measuring`."""
        finetune = self._finetune_estimate(amount)
        return None if finetune is None else finetune + measuring

    def parent_epoch_seconds(self) -> tuple[float, int] | None:
        """The parent's mean training epoch in seconds (its log.jsonl) and its epochs; None without a log."""
        try:
            rows = [json.loads(line) for line in (self.parent / layout.LOG).read_text().splitlines() if line.strip()]
            seconds = [float(r["seconds"]) for r in rows if isinstance(r, dict) and "seconds" in r]
            trained = int(records.read_metrics(self.parent).get("config", {}).get("epochs") or len(seconds))
        except (OSError, ValueError, TypeError, records.RecordError):
            return None
        if not seconds or not all(math.isfinite(x) and x >= 0 for x in seconds):
            return None
        return sum(seconds) / len(seconds), trained

    def _finetune_estimate(self, amount: float) -> float | None:
        """Seconds the fine-tune at `amount` is expected to take (None: no parent log to go by): the
        parent's epoch time x the fine-tune's epochs x the MACs left, (1 - amount)^2, x 1.25 for what
        does not shrink (ResNet-18 at 50% on 2 cores: 153 s per epoch against the parent's ~500 s),
        x 2 with `--distill on` (the teacher's forward: 299 s against 153 s plain)."""
        from cnndeploy.train.prune import default_finetune_epochs

        parent = self.parent_epoch_seconds()
        if parent is None:
            return None
        per_epoch, trained = parent
        epochs = self.cfg.finetune_epochs or default_finetune_epochs(trained)
        distill = 2.0 if self.cfg.distill == "on" else 1.0
        return distill * epochs * per_epoch * min(1.0, 1.25 * (1 - amount) ** 2)

    def _skip_rest(self, amounts: list[float], why: str) -> None:
        for amount in amounts:
            self.deadline.skip(f"{stage_name(amount)} (pruning {amount:.0%}): not tried, {why}")

    def _new_stage(self, amount: float, qat: bool = False) -> Stage:
        name = stage_name(amount, qat)
        stage = Stage(name, self.work / name, amount)
        self.stages[name] = stage
        return stage

    # --- making candidates --------------------------------------------------------------------

    def _reused(self, stage: Stage) -> bool:
        """Copy an earlier search's fine-tuned run of this amount (same parent, same validation split)."""
        if not self.cfg.reuse:
            return False
        src = Path(self.cfg.reuse) / layout.OPTIMIZE_WORK / stage.name
        try:
            made = records.PruneRecord.read(src)
            config = records.read_metrics(src).get("config", {})
        except records.RecordError:
            return False
        if (made is None or Path(made.source_run).resolve() != self.parent.resolve() or made.amount != stage.amount
                or (config.get("holdout", 0), config.get("holdout_seed", 0)) != (self.holdout.size, self.holdout.seed)):
            return False
        # made with other options is not the fine-tune this search asks for (auto takes either recipe)
        asked = {"finetune_epochs": self.cfg.finetune_epochs}
        if self.cfg.distill != "auto":
            asked["distill"] = self.cfg.distill == "on"
        made_with = {**made.config, "distill": made.finetune_teacher is not None}
        if differ := [k for k, v in asked.items() if made_with.get(k) != v]:
            log.info("%s: %s not reused, it was made with other %s", stage.name, src, ", ".join(differ))
            return False
        # the trained weights and records only: exported and quantized files are rebuilt, so a fix
        # to the exporter or quantizer since that search reaches the reused run too
        shutil.copytree(src, stage.run, ignore=shutil.ignore_patterns(layout.LOCK, "*.onnx", "*.engine"))
        stage.distill = made.finetune_teacher is not None
        self.validation.setdefault("reused", []).append(str(src))
        log.info("%s: the fine-tuned run of %s reused (%s)", stage.name, src, "distilled" if stage.distill else "plain")
        return True

    def _prune(self, amount: float) -> Stage | None:
        stage = self._new_stage(amount)
        if self._reused(stage):
            stage.reused = True
            return stage
        t0 = time.perf_counter()
        distill = self.cfg.distill == "on"
        # auto: the first pruned amount fine-tunes both ways; later ones follow what it measured
        tried = [s for s in self.stages.values() if s.amount > 0 and s is not stage and not s.qat_epochs]
        try:
            if self.cfg.distill == "auto" and not tried:
                distill = self._distill_trial(amount, stage)
            else:
                distill = tried[0].distill if self.cfg.distill == "auto" else distill
                self._prune_into(amount, stage.run, distill)
        except CnnDeployError as e:
            self._failed(stage, f"pruning {amount:.0%} failed: {e}")
            return None
        stage.distill, stage.seconds = distill, time.perf_counter() - t0
        return stage

    def _prune_into(self, amount: float, dest: Path, distill: bool) -> None:
        prune_stage(self.parent, dest, amount, holdout=self.holdout, finetune_epochs=self.cfg.finetune_epochs,
                    distill=distill, data_dir=self.data_dir, progress=self.progress)

    def _distill_trial(self, amount: float, stage: Stage) -> bool:
        """Fine-tune the first pruned amount both ways; keep the one with the better validation accuracy
        (the loser's folder is removed) and use its choice for every later amount."""
        from cnndeploy.optimize.measure import torch_val_accuracy

        plain, kd = stage.run.with_name(stage.name + "-plain"), stage.run.with_name(stage.name + "-kd")
        t0 = time.perf_counter()
        self._prune_into(amount, plain, False)
        acc_plain = torch_val_accuracy(plain, self.val)
        # the distilled fine-tune also runs the parent forward (ResNet-18 at 50%: 299 s per epoch against
        # 153 s plain); then the stage is measured, then the finalists
        stage.trial_seconds = time.perf_counter() - t0
        if not self.deadline.allows(2 * stage.trial_seconds + self.measure_cost,
                                    f"{stage.name}: the distilled fine-tune (plain kept)", keep=self.measure_cost):
            kd_acc, stage.trial_seconds = None, 0.0
        else:
            self._prune_into(amount, kd, True)
            kd_acc = torch_val_accuracy(kd, self.val)
        distill = kd_acc is not None and kd_acc > acc_plain
        winner, loser = (kd, plain) if distill else (plain, kd)
        if loser.exists():
            shutil.rmtree(loser)
        winner.rename(stage.run)
        self.validation["distill_trial"] = {"amount": amount, "plain_val_accuracy": acc_plain,
                                            "distill_val_accuracy": kd_acc, "chosen": "distill" if distill else "plain"}
        log.info("fine-tune of %s: plain %.2f%%, distilled %s on validation: %s", stage.name, 100 * acc_plain,
                 "not tried" if kd_acc is None else f"{100 * kd_acc:.2f}%", "distillation" if distill else "plain")
        return distill

    def _failed(self, stage: Stage, why: str) -> None:
        log.warning("%s", why)
        self.candidates.append(Candidate(name=f"{stage.name}:-", stage=stage.name, prune_amount=stage.amount,
                                         file="-", backend="-", precision="-", status=f"failed: {why}"))

    # --- measuring ------------------------------------------------------------------------------

    def _bench_cfg(self, backends: tuple[str, ...]) -> BenchConfig:
        return BenchConfig(backends=list(backends), batch_sizes=[self.cfg.batch_size], threads=self.cfg.threads,
                           min_seconds=self.cfg.min_seconds, rounds=3)

    def _measure(self, stage: Stage, files: list[FileSpec], backends: tuple[str, ...], *, label: str) -> list[Candidate]:
        """Validation accuracy and latency of `files` of `stage` on `backends`, interleaved."""
        from cnndeploy.models.cost import run_cost
        from cnndeploy.runtime.runners import KIND, backend_variants

        if stage.name not in self.costs:
            self.costs[stage.name] = run_cost(stage.run)
        card = ModelCard.read(stage.run)
        jobs = [(w, b) for f in files for b in backends if KIND[b] == f.kind
                for w in backend_variants(b, Variant(stage.run, f))]
        rows = time_variants(jobs, {stage.run.name: (card, self.val, self.costs[stage.name])},
                             self._bench_cfg(backends), progress=self.progress, desc=label)
        found = [self._candidate(stage, r) for r in rows]
        self.candidates += found
        return found

    def _candidate(self, stage: Stage, row: BenchRow) -> Candidate:
        base = spec(row.file) if row.file in {f.name for f in layout.FILES} else None
        name = f"{stage.name}:{row.file}@{row.backend}" + (f"/{row.precision}" if base and row.precision != base.precision else "")
        c = Candidate(name=name, stage=stage.name, prune_amount=stage.amount, file=row.file, backend=row.backend,
                      precision=row.precision, status=row.status, excluded_nodes=stage.excluded.get(row.file, []),
                      qat_epochs=stage.qat_epochs, val_accuracy=row.accuracy, latency_ms_p50=row.latency_ms_p50,
                      latency_ms_p99=row.latency_ms_p99, throughput_ips=row.throughput_ips, spread=row.spread,
                      size_bytes=row.size_bytes, macs=row.macs)
        self._judge(c)
        return c

    def _judge(self, c: Candidate) -> None:
        if self.reference is None or c.val_accuracy is None or self.reference.val_accuracy is None:
            return
        c.val_drop_points = round(100 * (self.reference.val_accuracy - c.val_accuracy), 3)
        c.within_budget = c.status == "ok" and c.val_drop_points <= self.cfg.max_drop + 1e-9

    def _measure_stage(self, stage: Stage, *, reference: bool = False) -> None:
        try:
            stage.files = [ensure_onnx(stage, self.data_dir)]
            stage.files.append(make_int8(stage, self.calib, self.quant_target))
        except CnnDeployError as e:
            self._failed(stage, f"{stage.name}: {e}")
            return
        if reference:   # FP32 PyTorch eager: measured first, so every later row is judged against it
            rows = self._measure(stage, [spec(layout.WEIGHTS)], ("torch",), label="reference")
            fp32 = [c for c in rows if c.status == "ok" and c.precision == "fp32"]
            if not fp32:
                raise CnnDeployError(f"optimize: FP32 PyTorch eager of {self.parent} did not run "
                                     f"({rows[0].status if rows else 'no row'}); it is the reference")
            self.reference = fp32[0]
            for c in rows:
                self._judge(c)
            self.reference.reason = REFERENCE
        backends = tuple(b for b in self.backends if b != "torch")
        self._measure(stage, stage.files, backends, label=stage.name)
        if "torch" in self.backends and not reference:
            self._measure(stage, [spec(layout.WEIGHTS)], ("torch",), label=f"{stage.name} torch")

    def _best(self, stage: str | None = None) -> Candidate | None:
        pool = [c for c in self.candidates if c.within_budget and c.throughput_ips and self._deployable(c)
                and (stage is None or c.stage.split("-")[0] == stage)]
        return max(pool, key=lambda c: c.throughput_ips, default=None)

    @staticmethod
    def _deployable(c: Candidate) -> bool:
        """An ONNX file or engine: what ships. Torch rows (the reference, and its fp16/bf16 casts on a
        GPU) are measured beside them but not chosen."""
        return c.file not in (layout.WEIGHTS, "-")

    # --- INT8 rescue ------------------------------------------------------------------------------

    def _rescue(self, stage: Stage) -> None:
        from cnndeploy.optimize.rescue import rescue_int8

        if stage.files:
            rescue_int8(self, stage)

    # --- the end -----------------------------------------------------------------------------------

    def _finish(self, finished: bool) -> OptimizeRecord:
        from cnndeploy.optimize.finalists import finalise

        return finalise(self, finished)


class _OutOfTime(Exception):
    """The time budget ended the search; what was measured so far is still reported."""


def lineage(search: Search, c: Candidate) -> dict[str, Any]:
    """What best.onnx says about itself: where it comes from and the budget it meets."""
    return {"source_run": str(search.parent.resolve()), "prune_amount": c.prune_amount, "precision": c.precision,
            "backend": c.backend, "excluded_nodes": c.excluded_nodes, "qat_epochs": c.qat_epochs,
            "candidate": c.name, "max_drop_points": search.cfg.max_drop, "val_drop_points": c.val_drop_points,
            "val_accuracy": c.val_accuracy, "test_accuracy": c.test_accuracy,
            "reference_test_accuracy": search.reference.test_accuracy if search.reference else None,
            "validation": {k: search.validation[k] for k in ("size", "seed")}, "batch_size": search.cfg.batch_size,
            "target": search.cfg.target, "made_by": "cnndeploy optimize"}


def json_line(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
