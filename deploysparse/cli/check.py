"""`deploysparse check REPORT --baseline BASELINE`: the CI gate. Exit 0 pass, 1 regression, 2 bad input."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from deploysparse import atomic
from deploysparse.check import (
    CheckResult,
    compare_reports,
    resolve_tolerances,
    table_rows,
    to_junit,
    to_markdown,
)
from deploysparse.errors import UsageError
from deploysparse.report.schema import load_report

_Tolerance = click.FloatRange(min=0.0)


@click.command("check")
@click.argument("report", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--baseline",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Committed report.json.",
)
@click.option(
    "--latency-tolerance", type=_Tolerance, help="Relative p50/p99 growth allowed [recipe's, else 0.10]."
)
@click.option(
    "--accuracy-tolerance",
    type=_Tolerance,
    help="Absolute accuracy/top-1 drop allowed [recipe's, else 0.005].",
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
    report: Path,
    baseline: Path,
    latency_tolerance: float | None,
    accuracy_tolerance: float | None,
    junit: Path | None,
    markdown: Path | None,
    update_baseline: bool,
) -> int:
    """Compare REPORT (report.json of a run) with BASELINE and fail on a regression.

    Latency (median over repeated runs) may grow by the latency tolerance, accuracy and top-1
    agreement may fall by the accuracy tolerance, parameters and FLOPs may not grow.
    """
    from deploysparse.output_guard import reads, refuse_overlap, writes

    refuse_overlap(
        [*writes("--junit", junit), *writes("--markdown", markdown)],
        [*reads("the report", report), *reads("--baseline", baseline)],
    )
    if update_baseline and baseline.exists() and _same_file(baseline, report):
        raise UsageError(f"--baseline {baseline} is the report itself; nothing to update")
    current = load_report(report)
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # CI logs: rich would otherwise wrap the table at 80 columns
    if update_baseline and not baseline.exists():
        atomic.write_bytes(baseline, report.read_bytes())
        console.print(f"baseline created: {baseline}")
        return 0
    result = compare_reports(
        current, load_report(baseline), resolve_tolerances(current, latency_tolerance, accuracy_tolerance)
    )
    _print(console, result)
    if junit is not None:
        atomic.write_text(junit, to_junit(result))
    if markdown is not None:
        atomic.write_text(markdown, to_markdown(result))
    if update_baseline:
        atomic.write_bytes(baseline, report.read_bytes())
        console.print(f"baseline updated: {baseline}")
        return 0
    return 0 if result.passed else 1


def _same_file(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and a.samefile(b)


def _print(console: Console, result: CheckResult) -> None:
    table = Table(title="deploysparse check", title_justify="left")
    for header in ("Check", "Baseline", "Current", "Change", "Limit", "Result", "Detail"):
        justify = "right" if header in ("Baseline", "Current", "Change", "Limit") else "left"
        table.add_column(header, justify=justify, overflow="fold")
    for row in table_rows(result):
        style = "green" if row[5] == "pass" else "bold red"
        table.add_row(*map(Text, row[:5]), Text(row[5], style=style), Text(row[6]))
    console.print(table)
    for note in result.notes:
        console.print(Text.assemble(("note: ", "yellow"), note))
    tol = result.tolerances
    if result.passed:
        console.print(
            f"[green]PASS[/]: {len(result.items)} checks (latency +{tol.latency:.0%}, accuracy -{tol.accuracy})"
        )
    else:
        console.print(
            f"[bold red]FAIL[/]: {len(result.failures)} of {len(result.items)} checks regressed "
            f"(latency +{tol.latency:.0%}, accuracy -{tol.accuracy})"
        )
