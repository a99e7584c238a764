"""Where datasets and caches live: --data-dir, then $CNNDEPLOY_DATA, then the user cache."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$CNNDEPLOY_CACHE, else $XDG_CACHE_HOME/cnndeploy, else ~/.cache/cnndeploy."""
    if os.environ.get("CNNDEPLOY_CACHE"):
        return Path(os.environ["CNNDEPLOY_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cnndeploy"


def data_roots(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The places to look for a named dataset, in order, each with how it was chosen."""
    roots: list[tuple[str, Path]] = []
    if data_dir:
        roots.append(("--data-dir", Path(data_dir).expanduser()))
    if os.environ.get("CNNDEPLOY_DATA"):
        roots.append(("$CNNDEPLOY_DATA", Path(os.environ["CNNDEPLOY_DATA"]).expanduser()))
    roots.append(("user cache", cache_dir() / "datasets"))
    return roots
