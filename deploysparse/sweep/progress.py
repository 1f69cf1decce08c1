"""What a person sees during a sweep: one bar for the whole sweep, one line per finished point.

The per-step spinners of `deploysparse run` are switched off meanwhile (two live displays cannot
share a terminal); the lines go to stderr always, the bar only when stderr is a terminal.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from deploysparse import progress
from deploysparse.sweep.config import BUDGET_KEYS


class SweepProgress:
    """`finished(row)` prints the point's line and advances the bar."""

    def __init__(self, total: int, done: int = 0) -> None:
        self.total = total
        self.count = done
        self.console = Console(stderr=True, highlight=False)
        self._show_bar = progress.enabled()
        self._bar: Progress | None = None
        self._task: Any = None
        self._was_quiet = False

    def __enter__(self) -> SweepProgress:
        self._was_quiet = progress.is_quiet()
        progress.set_quiet(True)
        if self.count:
            self.console.print(f"{self.count} of {self.total} points already finished: skipped")
        if self._show_bar:
            self._bar = Progress(
                TextColumn("sweep"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._bar.start()
            self._task = self._bar.add_task("sweep", total=self.total, completed=self.count)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
        progress.set_quiet(self._was_quiet)

    def finished(self, row: dict[str, Any]) -> None:
        self.count += 1
        self.console.print(f"[{self.count}/{self.total}] {describe(row)}", markup=False, soft_wrap=True)
        if self._bar is not None:
            self._bar.advance(self._task)


def describe(row: dict[str, Any]) -> str:
    """One line: the point's settings and its figures (or why it failed)."""
    budget = next((f"{k} {row[k]:g}" for k in BUDGET_KEYS if row.get(k) is not None), "no budget")
    head = (
        f"{row['model']} {row['criterion']} {budget} {row['precision']} {row['backend']} batch {row['batch']}"
    )
    if row.get("status") != "ok":
        return f"{head}: FAILED after {row.get('attempts', 1)} attempt(s): {row.get('error')}"
    accuracy = "accuracy n/a" if row.get("accuracy") is None else f"accuracy {row['accuracy']:.4f}"
    if row.get("accuracy_drop") is not None:
        accuracy += f" ({0.0 - row['accuracy_drop'] * 100 + 0.0:+.2f} pt)"
    return (
        f"{head}: {accuracy}, p50 {row['p50_ms']:.3f} ms, {row['size_bytes'] / 1024:.0f} KiB, "
        f"FLOPs {row['flops_ratio']:.0%}{'' if row.get('passed') else ', validation FAILED'} ({row['seconds']:.1f} s)"
    )
