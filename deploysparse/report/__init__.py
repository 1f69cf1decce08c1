"""The run report: its schema (report.json), and the self-contained HTML page made from it.

`deploysparse run` fills one `Report`; `deploysparse check` compares two of them; the HTML page is
what a person opens to see what was removed, what was pinned and why, and what it bought.
"""

from __future__ import annotations

from deploysparse.report.html import render_html, write_report
from deploysparse.report.schema import (
    SCHEMA_VERSION,
    Cost,
    LatencyPoint,
    LatencyRun,
    PinnedEntry,
    PlanGroup,
    Report,
    ReportError,
    Validation,
    load_report,
    parse_report,
)

__all__ = [
    "SCHEMA_VERSION",
    "Cost",
    "LatencyPoint",
    "LatencyRun",
    "PinnedEntry",
    "PlanGroup",
    "Report",
    "ReportError",
    "Validation",
    "load_report",
    "parse_report",
    "render_html",
    "write_report",
]
