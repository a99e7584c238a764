"""The bench loop's progress where no bar is drawn (--no-progress, or no terminal): a log line per variant.

Without it a bench prints nothing for as long as it measures. The loop's own `tqdm` call decides
whether a bar is drawn; `log_per_variant` lends it a tqdm that, when that bar is off, logs each
(variant, backend) as it starts instead.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from tqdm.auto import tqdm

log = logging.getLogger("cnndeploy")


def describe(item: Any) -> str:
    """(variant, backend) -> 'run:precision [backend]'; anything else by its name or text."""
    parts = item if isinstance(item, tuple) else (item,)
    names = [str(getattr(p, "name", p)) for p in parts]
    return names[0] + "".join(f" [{n}]" for n in names[1:])


class LoggedTqdm(tqdm):
    """A tqdm whose disabled bar logs '<desc> i/n: <item>' before each item."""

    def __init__(self, iterable: Any = None, *args: Any, **kwargs: Any) -> None:
        self.label = kwargs.get("desc") or "progress"  # tqdm keeps no desc when disabled
        super().__init__(iterable, *args, **kwargs)

    def __iter__(self) -> Iterator[Any]:
        if not self.disable:
            yield from super().__iter__()
            return
        total = self.total if self.total is not None else "?"
        for i, item in enumerate(self.iterable, 1):
            log.info("%s %d/%s: %s", self.label, i, total, describe(item))
            yield item


@contextlib.contextmanager
def log_per_variant() -> Iterator[None]:
    """While in it, the bench loop logs a line per variant whenever its progress bar is off."""
    from cnndeploy.bench import harness

    saved = harness.tqdm
    harness.tqdm = LoggedTqdm
    try:
        yield
    finally:
        harness.tqdm = saved
