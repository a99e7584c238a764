"""`Variant`: one deployable file of one run directory, with its lineage."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnndeploy.artifacts.card import ModelCard
from cnndeploy.artifacts.files import FileSpec, deployable
from cnndeploy.artifacts.records import source_run


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
