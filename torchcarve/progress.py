"""Progress for long steps: silent in the library, rich bars with an ETA inside `show_progress()`.

Long loops (calibration batches, sensitivity sweeps, latency timing, training) wrap themselves in
`step("what", total)` and call the returned `advance()` once per item. Nothing prints unless the
caller asked for it: the `carve` CLI does, and a library user can with `with tc.show_progress(): ...`.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
_ACTIVE: ContextVar[Progress | None] = ContextVar("torchcarve_progress", default=None)


@contextmanager
def show_progress(console: Console | None = None) -> Iterator[None]:
    """Show a bar with an ETA (on a terminal's stderr by default) for every long step run inside this block."""
    console = console or Console(stderr=True)
    if not console.is_terminal:  # pipes and logs get no bars (and no escape codes)
        yield
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        token = _ACTIVE.set(progress)
        try:
            yield
        finally:
            _ACTIVE.reset(token)


@contextmanager
def step(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A long step of `total` items (None: unknown, a spinner); yields `advance(n=1)`."""
    progress = _ACTIVE.get()
    if progress is None:
        yield lambda n=1: None
        return
    task = progress.add_task(description, total=total)
    try:
        yield lambda n=1: progress.advance(task, n)
    finally:
        progress.remove_task(task)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate `items`, advancing a bar (when one is shown) per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with step(description, total) as advance:
        for item in items:
            yield item
            advance(1)
