"""What the gate prints and writes: a table's rows, JUnit XML, a Markdown summary, the closing line.

Every output carries each check's verdict and the latency mode, so a CI log, a test view and a
pull-request comment say the same thing. JUnit has no "inconclusive": such a check is a `skipped`
test case with the reason, and the exit code (4) tells the pipeline.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from deploysparse.check.compare import CheckResult
from deploysparse.check.items import CheckItem

HEADERS = ("Check", "Baseline", "Current", "Change", "Interval", "Limit", "Verdict", "Detail")


def table_rows(result: CheckResult) -> list[list[str]]:
    """Rows for a terminal table: the cells of `to_markdown` without escaping."""
    return [[*_cells(item), item.detail] for item in result.items]


def headline(result: CheckResult) -> str:
    """The closing line: the verdict, how many checks it rests on, and the tolerances."""
    tol = result.tolerances
    settings = f"latency +{tol.latency:.0%} at {tol.confidence:.0%} confidence, accuracy -{tol.accuracy}"
    count = len(result.items)
    if result.verdict == "regressed":
        return f"FAIL: {len(result.failures)} of {count} checks regressed ({settings})"
    if result.verdict == "inconclusive":
        return (
            f"INCONCLUSIVE: {len(result.undecided)} of {count} checks could not be decided, "
            f"the noise is wider than the tolerance ({settings})"
        )
    return f"PASS: {count} checks ({settings})"


def to_junit(result: CheckResult) -> str:
    """JUnit XML, one test case per check, so CI systems show each regression by name."""
    suite = ET.Element(
        "testsuite",
        name="deploysparse check",
        tests=str(len(result.items)),
        failures=str(len(result.failures)),
        errors="0",
        skipped=str(len(result.undecided)),
    )
    ET.SubElement(
        ET.SubElement(suite, "properties"), "property", name="latency mode", value=result.mode.describe()
    )
    for item in result.items:
        case = ET.SubElement(suite, "testcase", classname="deploysparse.check", name=item.name)
        summary = _summary(item)
        if item.verdict == "regressed":
            ET.SubElement(case, "failure", message=summary, type="regression").text = summary
        elif item.verdict == "inconclusive":
            ET.SubElement(case, "skipped", message=summary)
        else:
            ET.SubElement(case, "system-out").text = summary
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def to_markdown(result: CheckResult) -> str:
    """A Markdown summary for a pull-request comment or GitHub's job summary."""
    titles = {
        "pass": "PASS",
        "regressed": f"FAIL ({len(result.failures)} of {len(result.items)} checks)",
        "inconclusive": f"INCONCLUSIVE ({len(result.undecided)} of {len(result.items)} checks)",
    }
    tol = result.tolerances
    lines = [
        f"## deploysparse check: {titles[result.verdict]}",
        "",
        f"Tolerances: latency +{tol.latency:.0%} ({tol.confidence:.0%} interval of the change), "
        f"accuracy -{tol.accuracy:.4f} (absolute). Mode: {result.mode.describe()}.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for item in result.items:
        cells = [*_cells(item), item.detail]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if result.notes:
        lines += ["", *(f"- Note: {note}" for note in result.notes)]
    return "\n".join(lines) + "\n"


def _cells(item: CheckItem) -> list[str]:
    limit = "" if item.limit is None or item.kind == "flag" else item.show(item.limit)
    verdict = item.verdict.upper() if item.verdict in ("regressed", "inconclusive") else item.verdict
    return [
        item.name,
        item.show(item.baseline),
        item.show(item.current),
        item.change,
        item.interval_text,
        limit,
        verdict,
    ]


def _summary(item: CheckItem) -> str:
    name, baseline, current, change, interval, limit, verdict = _cells(item)
    text = f"{name}: {current} (baseline {baseline}{', ' + change if change else ''}"
    text += f", interval {interval}" if interval else ""
    text += f", limit {limit}) {verdict}" if limit else f") {verdict}"
    return text + (f"; {item.detail}" if item.detail else "")
