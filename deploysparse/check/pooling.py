"""Several reports of one model on one machine kind pooled into one, for the gate to compare.

Why: milliseconds move between two processes on the same runner by more than one report's interval
covers (docs/benchmarks.md: the bundled model's p50 at batch 1, relative to the yardstick, moved
with a standard deviation of 2.7% between `run` processes on a loaded 2-core runner, while one
report's own bootstrap put it at 0.4-1.7%). A single baseline report carries its process's draw into
every later check; a baseline pooled from several runs (the last few on the main branch) averages
those draws and rests its interval on all their runs, so the same slowdown decides more often. The
report side can be pooled the same way (a CI job that runs the recipe twice).

Pooling keeps the first report whole and appends the other reports' runs to each latency point
(compact, original, flushed original, compact fp32, yardstick): `check` resamples runs, so the
pooled runs enter its cluster bootstrap as runs of one long measurement. Only reports of the same
model (sha256), timed the same way (machine fingerprint, yardstick version, backend and precision,
batch sizes) are pooled; anything else is refused with the file named, because pooling two machines'
milliseconds would hide the very difference the gate looks for. The same run given twice is refused
too: its calls would count twice and narrow the interval with no new evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from deploysparse.errors import UsageError
from deploysparse.report.schema import Latency, Report

POOLED_POINTS = ("compact", "original", "original_flushed", "compact_fp32", "yardstick")


def pool_reports(reports: Sequence[tuple[Path, Report]], role: str) -> Report:
    """One report holding every run of `reports` (path, report), the first report's everything else;
    `role` ("--baseline", "the report") names them in a refusal."""
    (first_path, first), *others = reports
    if not others:
        return first
    pooled = first.model_copy(deep=True)
    seen = [(first_path, first)]
    for path, other in others:
        why = _why_not_poolable(first, other)
        if why:
            raise UsageError(f"{role} {path}: cannot be pooled with {first_path}: {why}")
        twin = next((seen_path for seen_path, report in seen if report == other), None)
        if twin is not None:
            raise UsageError(
                f"{role} {path}: the same run as {twin}; pooling a run twice narrows the interval "
                "without new evidence"
            )
        seen.append((path, other))
        for field in POOLED_POINTS:
            mine = getattr(pooled.latency, field)
            theirs = {point.batch: point for point in getattr(other.latency, field)}
            for point in mine:
                point.runs.extend(run.model_copy(deep=True) for run in theirs[point.batch].runs)
                point.outlier_runs = []  # indices into one report's runs; `check` finds its own
    return pooled


def pooled_note(reports: Sequence[tuple[Path, Report]], role: str) -> str | None:
    """The line the gate prints for a pooled side (None for a single report)."""
    if len(reports) < 2:
        return None
    runs: dict[int, int] = {}
    for _, report in reports:
        for point in report.latency.compact:
            runs[point.batch] = runs.get(point.batch, 0) + len(point.runs)
    per_batch = ", ".join(f"{count} runs at batch {batch}" for batch, count in sorted(runs.items()))
    return f"{role} pools {len(reports)} reports of the same model and machine ({per_batch})"


def _why_not_poolable(first: Report, other: Report) -> str:
    """What differs between two reports that pooling needs alike ('' when nothing does)."""
    if other.model.sha256 != first.model.sha256:
        return f"another model (sha256 {other.model.sha256[:12]} vs {first.model.sha256[:12]})"
    for key in ("backend", "precision"):
        if getattr(other.target, key) != getattr(first.target, key):
            return f"another target {key} ({getattr(other.target, key)!r} vs {getattr(first.target, key)!r})"
    mine, theirs = first.latency.fingerprint, other.latency.fingerprint
    if (mine is None) != (theirs is None):
        return "one of them records no machine fingerprint"
    if mine is not None and theirs is not None and mine.differences(theirs):
        return "another machine (" + "; ".join(mine.differences(theirs)) + ")"
    if other.latency.yardstick_version != first.latency.yardstick_version:
        return "another yardstick version"
    for field in POOLED_POINTS:
        if _batches(first.latency, field) != _batches(other.latency, field):
            return f"other batch sizes timed for {field.replace('_', ' ')}"
    return ""


def _batches(latency: Latency, field: str) -> list[int]:
    return sorted(point.batch for point in getattr(latency, field))
