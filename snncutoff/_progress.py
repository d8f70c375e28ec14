"""Progress bars that read a data loader exactly once.

``tqdm.auto.tqdm(loader)`` (the asyncio flavour) creates an iterator of the loader when
it is constructed and another when it is iterated: a ``DataLoader`` then draws its base
seed twice from the global generator (shifting every later random encoding or
augmentation) and starts its workers twice. Here the loader is iterated by the caller,
once, and the bar is only updated, so a run with a bar draws the same random numbers as
one without.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def length(data: Any) -> int | None:
    """``len(data)`` where the iterable has one, else None."""
    try:
        return len(data)
    except TypeError:
        return None


def bar(desc: str, enabled: bool = True, unit: str = "batch", total: int | None = None) -> tqdm:
    """A tqdm bar on stderr, updated by hand (``bar.update(n)``); silent unless ``enabled``."""
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit=unit)


def progress(data: Iterable[T], desc: str, enabled: bool = True, unit: str = "batch") -> Iterator[T]:
    """Iterate ``data`` once (a single ``iter(data)``), with a bar when ``enabled``."""
    with bar(desc, enabled, unit, length(data)) as b:
        for item in data:
            yield item
            b.update(1)
