"""`deploysparse check REPORT... --baseline BASELINE [--baseline BASELINE ...]`: the CI gate.

Exit 0 pass, 1 regressed, 2 bad input, 4 inconclusive (the noise is wider than the tolerance).
Several reports on either side (runs of one model on one machine kind) are pooled (check/pooling.py).
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from deploysparse import atomic
from deploysparse.check import (
    HEADERS,
    MODES,
    CheckResult,
    compare_reports,
    headline,
    resolve_tolerances,
    table_rows,
    to_junit,
    to_markdown,
)
from deploysparse.check.pooling import pool_reports, pooled_note
from deploysparse.errors import UsageError
from deploysparse.report.schema import load_report

_Tolerance = click.FloatRange(min=0.0)
_STYLES = {"pass": "green", "REGRESSED": "bold red", "INCONCLUSIVE": "bold yellow", "not gated": "dim"}


@click.command("check")
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--baseline",
    "baselines",
    required=True,
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Committed report.json; give several runs of the same model on the same machine kind "
    "(repeat the option) to pool them: a narrower interval, fewer inconclusive checks.",
)
@click.option(
    "--latency-tolerance", type=_Tolerance, help="Relative p50/p99 growth allowed [recipe's, else 0.10]."
)
@click.option(
    "--accuracy-tolerance",
    type=_Tolerance,
    help="Absolute accuracy/top-1 drop allowed [recipe's, else 0.005].",
)
@click.option(
    "--latency-mode",
    type=click.Choice(MODES),
    default="auto",
    show_default=True,
    help="Compare latency in ms (absolute), relative to the original timed in the same run (relative), "
    "relative to the yardstick timed in the same run (yardstick), or choose (auto): relative for the "
    "same model or another machine, the yardstick (else ms) for a changed model on a machine whose "
    "fingerprint matches the baseline's.",
)
@click.option(
    "--confidence",
    type=click.FloatRange(0.5, 1.0, max_open=True),
    help="Confidence of the latency change's interval [0.95].",
)
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML here.")
@click.option(
    "--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Write a Markdown summary here."
)
@click.option(
    "--update-baseline",
    is_flag=True,
    help="Accept this report: write it as the baseline and exit 0 (creates a missing baseline).",
)
def command(
    reports: tuple[Path, ...],
    baselines: tuple[Path, ...],
    latency_tolerance: float | None,
    accuracy_tolerance: float | None,
    latency_mode: str,
    confidence: float | None,
    junit: Path | None,
    markdown: Path | None,
    update_baseline: bool,
) -> int:
    """Compare REPORT (report.json of a run) with BASELINE and fail on a regression.

    Latency regresses when the confidence interval of its change lies wholly above the tolerance,
    and is inconclusive (exit 4) when the interval straddles it; accuracy and top-1 agreement may
    fall by the accuracy tolerance, parameters and FLOPs may not grow. Several reports (or
    baselines) of the same model on the same machine kind are pooled into one measurement.
    """
    from deploysparse.output_guard import reads, refuse_overlap, writes

    refuse_overlap(
        [*writes("--junit", junit), *writes("--markdown", markdown)],
        [
            *(path for report in reports for path in reads("the report", report)),
            *(path for baseline in baselines for path in reads("--baseline", baseline)),
        ],
    )
    if update_baseline:
        _refuse_update(reports, baselines)
        if not baselines[0].exists():
            load_report(reports[0])
            atomic.write_bytes(baselines[0], reports[0].read_bytes())
            _console().print(f"baseline created: {baselines[0]}")
            return 0
    current_side = [(path, load_report(path)) for path in reports]
    baseline_side = [(path, load_report(path)) for path in baselines]
    current = pool_reports(current_side, "the report")
    console = _console()
    tolerances = resolve_tolerances(current, latency_tolerance, accuracy_tolerance, confidence)
    result = compare_reports(current, pool_reports(baseline_side, "--baseline"), tolerances, latency_mode)
    result.notes[:0] = [
        note
        for note in (pooled_note(current_side, "the report"), pooled_note(baseline_side, "the baseline"))
        if note
    ]
    _print(console, result)
    if junit is not None:
        atomic.write_text(junit, to_junit(result))
    if markdown is not None:
        atomic.write_text(markdown, to_markdown(result))
    if update_baseline:
        atomic.write_bytes(baselines[0], reports[0].read_bytes())
        console.print(f"baseline updated: {baselines[0]}")
        return 0
    return result.exit_code


def _refuse_update(reports: tuple[Path, ...], baselines: tuple[Path, ...]) -> None:
    """--update-baseline writes one report over one baseline: anything else is a usage error."""
    if len(reports) > 1 or len(baselines) > 1:
        raise UsageError("--update-baseline takes one report and one --baseline")
    if baselines[0].exists() and _same_file(baselines[0], reports[0]):
        raise UsageError(f"--baseline {baselines[0]} is the report itself; nothing to update")


def _console() -> Console:
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # CI logs: rich would otherwise wrap the table at 80 columns
    return console


def _same_file(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and a.samefile(b)


def _print(console: Console, result: CheckResult) -> None:
    table = Table(title="deploysparse check", title_justify="left")
    verdict = HEADERS.index("Verdict")
    for header in HEADERS:
        justify = "right" if header in ("Baseline", "Current", "Change", "Interval", "Limit") else "left"
        table.add_column(header, justify=justify, overflow="fold")
    for row in table_rows(result):
        cells = [Text(cell) for cell in row]
        cells[verdict].stylize(_STYLES.get(row[verdict], ""))
        table.add_row(*cells)
    console.print(table)
    console.print(Text.assemble(("mode: ", "cyan"), result.mode.describe()))
    for note in result.notes:
        console.print(Text.assemble(("note: ", "yellow"), note))
    style = {"pass": "green", "regressed": "bold red", "inconclusive": "bold yellow"}[result.verdict]
    word, _, rest = headline(result).partition(":")
    console.print(Text.assemble((word, style), ":" + rest))
