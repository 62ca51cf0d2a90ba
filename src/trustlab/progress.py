"""Progress bars (rich) that every long loop uses; ``quiet`` turns them into no-ops."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


class _Silent:
    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        pass

    def advance(self, *args, **kwargs) -> None:
        pass


@contextlib.contextmanager
def progress_bar(quiet: bool = False) -> Iterator:
    """A rich ``Progress`` (bar, count, elapsed, remaining) on stderr, or a silent stand-in."""
    if quiet:
        yield _Silent()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(file=sys.stderr)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=not console.is_terminal) as bar:
        yield bar
