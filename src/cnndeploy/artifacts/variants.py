"""`Variant`: one deployable file of one run directory, with its lineage."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.files import MODEL_JSON, PIPELINE, FileSpec, deployable
from cnndeploy.artifacts.records import source_run
from cnndeploy.errors import CheckpointError
from cnndeploy.fileio import read_json


@dataclass(frozen=True)
class Variant:
    run: Path          # the run directory (its model.json gives preprocessing and dataset)
    spec: FileSpec     # the row of the run-directory table

    @property
    def path(self) -> Path:
        return self.run / self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def precision(self) -> str:
        return self.spec.precision

    @property
    def name(self) -> str:
        """run:precision; the backend completes it (a file name would say the same, less readably)."""
        return f"{self.run.name}:{self.precision}"

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    @property
    def source(self) -> Path | None:
        """The file of the same run this one was made from."""
        return self.run / self.spec.source if self.spec.source else None

    @property
    def parent_run(self) -> Path | None:
        """The run this variant's run was pruned from (None for a run trained from scratch)."""
        return source_run(self.run)


def discover(run_dir: str | os.PathLike, *, classifiers_only: bool = True) -> list[Variant]:
    """Every deployable file in RUN_DIR, weights first; raises if RUN_DIR is not a run directory.

    `classifiers_only` keeps the files that take normalised float32 NCHW (what bench and the
    demo run); Triton also serves the others.
    """
    run = Path(run_dir)
    ModelCard.read(run)  # a clear error for something that is not a run directory
    return [Variant(run, s) for s, _ in deployable(run) if s.classifies or not classifiers_only]


def family_root(run: Path, known: dict[str, Path]) -> Path:
    """The unpruned run `run` descends from, among `known` (by folder name), else `run` itself."""
    parent = source_run(run)
    return known.get(parent.name, run) if parent else run


def expand_run_dirs(paths: list[str | os.PathLike]) -> list[Path]:
    """Run directories for RUN_DIR... arguments: a run directory stays itself, and a folder of them
    (a `cnndeploy pipeline` output, or runs/) becomes the run directories it holds, in the order
    its pipeline.json lists them, the others sorted after; duplicates are dropped."""
    runs: list[Path] = []
    for given in paths:
        path = Path(given)
        if (path / MODEL_JSON).is_file():
            found = [path]
        elif not path.is_dir():
            raise CheckpointError(f"run directory not found: {path} (expected a folder made by 'cnndeploy train' "
                                  "or 'cnndeploy prune', or a 'cnndeploy pipeline' output folder holding them)")
        else:
            found = _held_runs(path)
            if not found:
                raise CheckpointError(
                    f"{MODEL_JSON} not found in {path}, nor in any folder inside it: expected a run directory "
                    f"(made by 'cnndeploy train' or 'cnndeploy prune') or a folder holding run directories "
                    f"(such as the --out folder of 'cnndeploy pipeline')")
        runs += [r for r in found if r.resolve() not in {q.resolve() for q in runs}]
    return runs


def _held_runs(folder: Path) -> list[Path]:
    held = sorted(p for p in folder.iterdir() if (p / MODEL_JSON).is_file())
    listed = []
    if (folder / PIPELINE).is_file():
        try:
            names = read_json(folder / PIPELINE, what=PIPELINE).get("runs")
        except (CheckpointError, AttributeError):
            names = None  # unreadable or foreign: the folder's own order
        if isinstance(names, list):
            listed = [folder / n for n in names if isinstance(n, str) and folder / n in held]
    return listed + [p for p in held if p not in listed]
