"""A progress bar for the slow steps (calibration, engine builds, long benchmarks), shown only to people.

The bar goes to stderr and only when stderr is a terminal: CI logs and `--json` output stay clean,
and `--quiet` switches it off explicitly.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Switch progress display off for the rest of the process (the CLI's --quiet and --json)."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    """True after set_quiet(True): callers that silence progress for a while restore this."""
    return _quiet


def enabled() -> bool:
    """True when a bar would be seen by a person: not quiet, and stderr is a terminal."""
    return not _quiet and sys.stderr.isatty()


@contextlib.contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """Show a bar (or a spinner when `total` is None) while the block runs; yield `advance(n)`."""
    if not enabled():
        yield lambda steps=1: None
        return
    from rich.console import Console  # only when a person sees the bar: a CI log never pays for rich
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn()]
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda steps=1: bar.advance(task, steps)
