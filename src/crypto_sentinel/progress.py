"""Progress of long jobs (replay, rebuild, maintenance, installs) on the terminal.

A bar on stderr when stderr is a terminal, nothing otherwise (logs, CI and pipes stay clean)
and nothing with `--quiet`. One small wrapper over `rich.progress` so every verb looks alike.
rich loads with the first bar: the verbs' modules are all imported to build the CLI, and a
long-lived process that draws none keeps its ~1 MB of code objects out.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


def wanted(quiet: bool = False) -> bool:
    """Bars only on a terminal, and not with --quiet."""
    return not quiet and sys.stderr.isatty()


class Bar:
    """One task's bar: `advance(n)`, `update(completed=, total=, note=)`."""

    def __init__(self, progress: Progress, description: str, total: float | None) -> None:
        self._progress = progress
        self._task = progress.add_task(description, total=total, note="")

    def advance(self, amount: float = 1) -> None:
        self._progress.advance(self._task, amount)

    def update(
        self,
        *,
        completed: float | None = None,
        total: float | None = None,
        note: str | None = None,
    ) -> None:
        if note is None:
            self._progress.update(self._task, completed=completed, total=total)
        else:
            self._progress.update(self._task, completed=completed, total=total, note=note)


def new_progress(quiet: bool = False, console: Console | None = None) -> Progress:
    """A `Progress` with the project's columns (description, bar, count, time left, a note);
    disabled when not `wanted`. `console` is for tests (a forced terminal)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    enabled = console is not None or wanted(quiet)
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=console or Console(stderr=True),
        disable=not enabled or quiet,
        transient=False,
    )


@contextmanager
def bar(
    description: str,
    total: float | None = None,
    *,
    quiet: bool = False,
    console: Console | None = None,
) -> Iterator[Bar]:
    """A single bar for the duration of the block (total None: a spinner with a count)."""
    progress = new_progress(quiet, console)
    with progress:
        yield Bar(progress, description, total)
