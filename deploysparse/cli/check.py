"""`deploysparse check REPORT --baseline BASELINE`: the CI gate.

Exit 0 pass, 1 regressed, 2 bad input, 4 inconclusive (the noise is wider than the tolerance).
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
from deploysparse.errors import UsageError
from deploysparse.report.schema import load_report

_Tolerance = click.FloatRange(min=0.0)
_STYLES = {"pass": "green", "REGRESSED": "bold red", "INCONCLUSIVE": "bold yellow", "not gated": "dim"}


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
    report: Path,
    baseline: Path,
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
    fall by the accuracy tolerance, parameters and FLOPs may not grow.
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
        console = Console(width=160)  # CI logs: rich would otherwise wrap the table at 80 columns
    if update_baseline and not baseline.exists():
        atomic.write_bytes(baseline, report.read_bytes())
        console.print(f"baseline created: {baseline}")
        return 0
    tolerances = resolve_tolerances(current, latency_tolerance, accuracy_tolerance, confidence)
    result = compare_reports(current, load_report(baseline), tolerances, latency_mode)
    _print(console, result)
    if junit is not None:
        atomic.write_text(junit, to_junit(result))
    if markdown is not None:
        atomic.write_text(markdown, to_markdown(result))
    if update_baseline:
        atomic.write_bytes(baseline, report.read_bytes())
        console.print(f"baseline updated: {baseline}")
        return 0
    return result.exit_code


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
