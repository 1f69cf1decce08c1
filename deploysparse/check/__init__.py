"""The CI gate (`deploysparse check`): a run's report against a committed baseline.

compare.py gives each check a verdict (validation, params, FLOPs, accuracy, and latency through
latency.py: a mode chosen from the machine fingerprints, a confidence interval per percentile from
timing_stats); outputs.py prints and writes them (table, JUnit, Markdown).
"""

from deploysparse.check.compare import (
    DEFAULT_ACCURACY_TOLERANCE,
    DEFAULT_LATENCY_TOLERANCE,
    EXIT_CODES,
    CheckResult,
    Tolerances,
    compare_reports,
    resolve_tolerances,
)
from deploysparse.check.items import CheckItem, Verdict
from deploysparse.check.latency import MODES, LatencyMode, choose_mode
from deploysparse.check.outputs import HEADERS, headline, table_rows, to_junit, to_markdown

__all__ = [
    "DEFAULT_ACCURACY_TOLERANCE",
    "DEFAULT_LATENCY_TOLERANCE",
    "EXIT_CODES",
    "HEADERS",
    "MODES",
    "CheckItem",
    "CheckResult",
    "LatencyMode",
    "Tolerances",
    "Verdict",
    "choose_mode",
    "compare_reports",
    "headline",
    "resolve_tolerances",
    "table_rows",
    "to_junit",
    "to_markdown",
]
