"""The one progress bar for work over images (rendering, resizing, thumbnails, embedding): a Rich bar with
the count, images/s, elapsed and remaining time, on stderr so that it never mixes with printed results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def image_progress(
    total: int, description: str, *, show: bool = True, transient: bool = False
) -> Iterator[Callable[[int], None]]:
    """``with image_progress(n, "embedding") as advance: ... advance(k)`` after each ``k`` images.

    Shows nothing (``advance`` does nothing) when ``show`` is false or there is nothing to do. A
    ``transient`` bar is erased when done.
    """
    if not show or total <= 0:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} images/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
    )
    with bar:
        task = bar.add_task(description, total=total, rate="-")
        start, done = time.perf_counter(), 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            rate = done / max(time.perf_counter() - start, 1e-9)
            bar.update(task, advance=n, rate=f"{rate:,.1f}")

        yield advance


def track_images(
    items: Iterable[T],
    total: int,
    description: str,
    *,
    show: bool = True,
    count: Callable[[T], int] = lambda item: 1,
    transient: bool = False,
) -> Iterator[T]:
    """Yield ``items`` with :func:`image_progress` over ``total`` images; ``count(item)`` images each (a
    batch counts its size), advanced once the caller is done with the item."""
    with image_progress(total, description, show=show, transient=transient) as advance:
        for item in items:
            yield item
            advance(count(item))
