"""The CI gate: compare a run's report with a committed baseline and say whether anything regressed.

Latency may grow by a relative tolerance, accuracy and top-1 agreement may fall by an absolute one,
and the compact model's parameters and FLOPs may not grow at all. Latency on shared CI runners is
noisy, so each batch size is judged on the median over repeated benchmark runs, and the spread of
those runs is shown next to the verdict so a reader can tell noise from a real slowdown.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deploysparse.report.schema import LatencyPoint, Report, parse_report

DEFAULT_LATENCY_TOLERANCE = 0.10
DEFAULT_ACCURACY_TOLERANCE = 0.005


@dataclass(frozen=True)
class Tolerances:
    latency: float = DEFAULT_LATENCY_TOLERANCE  # relative growth allowed for p50 and p99
    accuracy: float = DEFAULT_ACCURACY_TOLERANCE  # absolute drop allowed for accuracy and top-1 agreement


@dataclass(frozen=True)
class CheckItem:
    """One comparison: a metric, its baseline and current value, the worst value allowed."""

    name: str
    baseline: float | None
    current: float | None
    limit: float | None
    passed: bool
    kind: str  # "latency" (ms), "count", "fraction" or "flag": decides how values are printed
    detail: str = ""

    @property
    def change(self) -> str:
        """The change from baseline, relative for latency and counts, in points for fractions."""
        if self.baseline is None or self.current is None or self.kind == "flag":
            return ""
        if self.kind == "fraction":
            return f"{(self.current - self.baseline) * 100:+.2f} pt"
        if self.baseline == 0:
            return "+0.0%" if self.current == 0 else "new"
        return f"{(self.current / self.baseline - 1) * 100:+.1f}%"

    def show(self, value: float | None) -> str:
        if value is None:
            return "missing"
        if self.kind == "latency":
            return f"{value:.3f} ms"
        if self.kind == "count":
            return f"{int(value):,}"
        if self.kind == "fraction":
            return f"{value:.4f}"
        return "yes" if value else "no"


@dataclass
class CheckResult:
    items: list[CheckItem]
    tolerances: Tolerances
    notes: list[str] = field(default_factory=list)  # differences that make the comparison less meaningful

    @property
    def passed(self) -> bool:
        return all(item.passed for item in self.items)

    @property
    def failures(self) -> list[CheckItem]:
        return [item for item in self.items if not item.passed]


def resolve_tolerances(
    report: Report, latency: float | None = None, accuracy: float | None = None
) -> Tolerances:
    """Tolerances from the options given, else from the report's recipe (its `check` section), else defaults."""
    from_recipe = report.recipe.settings.get("check") or {}
    return Tolerances(
        latency=latency
        if latency is not None
        else float(from_recipe.get("latency_tolerance", DEFAULT_LATENCY_TOLERANCE)),
        accuracy=accuracy
        if accuracy is not None
        else float(from_recipe.get("accuracy_tolerance", DEFAULT_ACCURACY_TOLERANCE)),
    )


def compare_reports(
    report: Report | dict[str, Any],
    baseline: Report | dict[str, Any],
    tolerances: Tolerances | None = None,
) -> CheckResult:
    """Judge `report` against `baseline`; tolerances default to those of the report's recipe."""
    current = report if isinstance(report, Report) else parse_report(report, "report")
    base = baseline if isinstance(baseline, Report) else parse_report(baseline, "baseline")
    tol = tolerances or resolve_tolerances(current)
    items = [
        CheckItem(
            "validation passed",
            1.0 if base.validation.passed else 0.0,
            1.0 if current.validation.passed else 0.0,
            1.0,
            current.validation.passed,
            "flag",
            "; ".join(current.validation.failures),
        ),
        _no_growth("params after pruning", base.cost.params_after, current.cost.params_after),
        _no_growth("FLOPs after pruning", base.cost.flops_after, current.cost.flops_after),
    ]
    for point in base.latency.compact:
        items.extend(_latency_items(point, current.latency.compact_at(point.batch), tol.latency))
    items.extend(
        _no_drop(name, read(base.validation), read(current.validation), tol.accuracy)
        for name, read in _ACCURACY_METRICS
    )
    return CheckResult([item for item in items if item is not None], tol, _notes(current, base))


_ACCURACY_METRICS: list[tuple[str, Callable[[Any], float | None]]] = [
    ("top-1 agreement", lambda v: v.top1_agreement),
    ("accuracy (compact)", lambda v: v.accuracy_compact),
]


def _no_growth(name: str, baseline: int, current: int) -> CheckItem:
    return CheckItem(name, baseline, current, baseline, current <= baseline, "count")


def _no_drop(name: str, baseline: float | None, current: float | None, tolerance: float) -> CheckItem | None:
    """A fraction may fall by `tolerance`; a metric the baseline has but the report lacks fails."""
    if baseline is None:
        return None
    limit = baseline - tolerance
    if current is None:
        return CheckItem(name, baseline, None, limit, False, "fraction", "the report does not measure it")
    return CheckItem(name, baseline, current, limit, current >= limit - 1e-12, "fraction")


def _latency_items(base: LatencyPoint, current: LatencyPoint | None, tolerance: float) -> list[CheckItem]:
    names = (f"latency p50 @ batch {base.batch}", f"latency p99 @ batch {base.batch}")
    if current is None:
        detail = "the report has no measurement at this batch size"
        return [CheckItem(name, None, None, None, False, "latency", detail) for name in names]
    low, high = current.p50_spread
    runs = max(len(current.runs), 1)
    detail = f"median of {runs} run{'s' if runs > 1 else ''}, p50 spread {low:.3f}-{high:.3f} ms"
    rows = ((base.median_p50, current.median_p50, detail), (base.median_p99, current.median_p99, ""))
    return [
        CheckItem(name, b, c, b * (1 + tolerance), c <= b * (1 + tolerance) + 1e-12, "latency", text)
        for name, (b, c, text) in zip(names, rows, strict=True)
    ]


def _notes(current: Report, base: Report) -> list[str]:
    notes = []
    if current.model.sha256 != base.model.sha256:
        notes.append(
            f"the model differs from the baseline's (sha256 {current.model.sha256[:12]} vs {base.model.sha256[:12]})"
        )
    for key in ("backend", "precision", "device"):
        now, then = getattr(current.target, key), getattr(base.target, key)
        if now != then:
            notes.append(
                f"target {key} differs from the baseline's ({now!r} vs {then!r}): latency is not comparable"
            )
    return notes


def to_junit(result: CheckResult) -> str:
    """JUnit XML, one test case per check, so CI systems show each regression by name."""
    suite = ET.Element(
        "testsuite",
        name="deploysparse check",
        tests=str(len(result.items)),
        failures=str(len(result.failures)),
        errors="0",
        skipped="0",
    )
    for item in result.items:
        case = ET.SubElement(suite, "testcase", classname="deploysparse.check", name=item.name)
        summary = _summary(item)
        if item.passed:
            ET.SubElement(case, "system-out").text = summary
        else:
            ET.SubElement(case, "failure", message=summary, type="regression").text = summary
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def to_markdown(result: CheckResult) -> str:
    """A Markdown summary for a pull-request comment or GitHub's job summary."""
    verdict = "PASS" if result.passed else f"FAIL ({len(result.failures)} of {len(result.items)} checks)"
    lines = [
        f"## deploysparse check: {verdict}",
        "",
        f"Tolerances: latency +{result.tolerances.latency:.0%} (median over runs), "
        f"accuracy -{result.tolerances.accuracy:.4f} (absolute).",
        "",
        "| Check | Baseline | Current | Change | Limit | Result | Detail |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for item in result.items:
        cells = [*_cells(item), item.detail]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if result.notes:
        lines += ["", *(f"- Note: {note}" for note in result.notes)]
    return "\n".join(lines) + "\n"


def _cells(item: CheckItem) -> list[str]:
    limit = "" if item.limit is None or item.kind == "flag" else item.show(item.limit)
    return [
        item.name,
        item.show(item.baseline),
        item.show(item.current),
        item.change,
        limit,
        "pass" if item.passed else "FAIL",
    ]


def _summary(item: CheckItem) -> str:
    name, baseline, current, change, limit, verdict = _cells(item)
    text = f"{name}: {current} (baseline {baseline}{', ' + change if change else ''}"
    text += f", limit {limit}) {verdict}" if limit else f") {verdict}"
    return text + (f"; {item.detail}" if item.detail else "")


def table_rows(result: CheckResult) -> list[list[str]]:
    """Rows for a terminal table: the cells of `to_markdown` without escaping."""
    return [[*_cells(item), item.detail] for item in result.items]
