"""The latency checks of the CI gate: which mode compares the reports, and a verdict with an interval
per batch size and percentile.

Mode. The gate compares the compact model's latency *relative to the original* timed in the same
rounds of the same run (`relative`): a slower or busier runner slows both alike, so the ratio
cancels it. The flushed original is the reference when both reports have one: how much denormal
weights cost depends on the CPU (2x on Intel, nothing on AMD for the bundled model), and the compact
model has none, so the ratio to the original as is would move with the CPU kind. A relative check
cannot see a model that got slower as a whole (its original slows with it), so when the model
changed, milliseconds are compared instead (`absolute`), but only when the machine fingerprints
match: milliseconds measured on two machines are not comparable (this project's model ran 2x apart
on an Intel and an AMD host). Milliseconds also move between two processes on the same runner (±6% at
batch 1 for the bundled model on a loaded 2-core runner, docs/benchmarks.md): so when both reports
timed the same yardstick (backends/yardstick.py: a fixed net timed in the same rounds), a changed model is
compared relative to it instead, which cancels the runner's speed and still shows a model slower as a
whole. The output says which mode ran, relative to what, and why.

Verdict. Per batch size and percentile: the change from the baseline and its cluster-bootstrap
interval (`timing_stats.change`); `regressed` only when the whole interval lies above the tolerance,
`pass` when it lies at or below it, `inconclusive` when it straddles it (the noise is wider than the
tolerance leaves room for), with the run-to-run spread and about how many runs would decide.

Tail percentiles are gated only with enough calls to estimate them: TAIL_MIN_BEYOND calls beyond the
percentile in each report (p99: 1000 calls). Fewer are reported, not gated, and the detail says why:
p99 of 50 calls is the second-slowest call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from deploysparse.check.items import CheckItem, Verdict
from deploysparse.report.schema import LatencyPoint, Report
from deploysparse.timing_stats import MIN_RUNS, Change, Runs, change, outlier_runs, spread

TAIL_MIN_BEYOND = 10  # calls beyond a percentile needed to gate it (a p99 from 1000 calls)
PERCENTILES = (("p50", 0.5), ("p99", 0.99))
MODES = ("auto", "absolute", "relative", "yardstick")
ORIGINALS = ("original_flushed", "original")  # the references of a relative check, preferred first
REFERENCE_NAMES = {
    "original_flushed": "the flushed original",
    "original": "the original",
    "yardstick": "the yardstick (a fixed reference net)",
}


@dataclass(frozen=True)
class LatencyMode:
    """How latency is compared: `absolute` (ms), `relative` (compact / `reference`, timed in the
    same rounds) or `none` (not gated: no reference to compare relative to); `reason` says why."""

    name: Literal["absolute", "relative", "none"]
    reason: str
    reference: str | None = None  # "original_flushed", "original" or "yardstick", in relative mode

    def describe(self) -> str:
        if self.name == "absolute":
            return f"latency compared in milliseconds: {self.reason}"
        if self.name == "relative":
            reference = REFERENCE_NAMES[self.reference or "original"]
            return f"latency compared relative to {reference} timed in the same run: {self.reason}"
        return f"latency not gated: {self.reason}"


def calls_to_gate(quantile: float) -> int:
    """Calls a report needs for a tail `quantile` (above the median) to be gated: TAIL_MIN_BEYOND of
    them beyond it. The median needs no more than the runs it rests on."""
    return math.ceil(TAIL_MIN_BEYOND / (1 - quantile) - 1e-9) if quantile > 0.5 else 0


def choose_mode(current: Report, baseline: Report, requested: str = "auto") -> LatencyMode:
    """The comparison mode: `requested` unless "auto". A model that changed on a machine whose
    fingerprint matches the baseline's is compared relative to the yardstick when both reports timed
    the same one, else in milliseconds (relative to its own original, a model slower as a whole would
    not show); everything else relative to the original timed in the same run: on another machine
    the ratio cancels the machine's speed, and for the same model (the original is the same bytes, so
    its speed can only be the machine's) the runner's load, hiding nothing."""
    reference = next(
        (name for name in ORIGINALS if getattr(current.latency, name) and getattr(baseline.latency, name)),
        None,
    )
    yardstick = _same_yardstick(current, baseline)
    if requested == "yardstick":
        if not yardstick:
            return LatencyMode(
                "none", "--latency-mode yardstick needs the same yardstick timed in both reports"
            )
        return LatencyMode("relative", "asked for (--latency-mode yardstick)", "yardstick")
    if requested == "absolute":
        return LatencyMode("absolute", "asked for (--latency-mode absolute)")
    if requested == "relative":
        if reference is None:
            return LatencyMode("none", "--latency-mode relative needs the original timed in both reports")
        return LatencyMode("relative", "asked for (--latency-mode relative)", reference)
    same_model = current.model.sha256 == baseline.model.sha256
    now, then = current.latency.fingerprint, baseline.latency.fingerprint
    differences = now.differences(then) if now is not None and then is not None else None
    if differences == [] and not same_model:
        changed = "the model changed on a machine like the baseline's (the fingerprints match): "
        if yardstick:
            return LatencyMode(
                "relative",
                changed + "relative to the yardstick timed in the same rounds, the runner's speed "
                "cancels and a model slower as a whole still shows",
                "yardstick",
            )
        return LatencyMode("absolute", changed + "only milliseconds show a model slower as a whole")
    if differences == []:
        why = (
            "the same model on a machine like the baseline's (the fingerprints match): the original is "
            "the same bytes, so the ratio cancels the runner's load and hides nothing"
        )
    elif differences:
        why = "the machine differs from the baseline's (" + "; ".join(differences) + ")"
    else:
        missing = "the baseline records" if then is None else "the report records"
        why = f"{missing} no machine fingerprint (written by an older deploysparse)"
    if not same_model and differences != []:
        why += "; the model changed too, and a model slower as a whole does not show relative to its original"
    if reference is None:
        if differences == []:
            return LatencyMode(
                "absolute", "the machine fingerprint matches the baseline's (no original timed in both)"
            )
        return LatencyMode("none", f"{why}, and there is no original timed in both reports to compare to")
    return LatencyMode("relative", why, reference)


def _same_yardstick(current: Report, baseline: Report) -> bool:
    """Whether both reports timed the same version of the yardstick."""
    now, then = current.latency, baseline.latency
    return bool(now.yardstick and then.yardstick) and now.yardstick_version == then.yardstick_version


def latency_items(
    current: Report, baseline: Report, mode: LatencyMode, tolerance: float, confidence: float
) -> list[CheckItem]:
    """p50 and p99 of the compact model at every batch size of the baseline."""
    items = []
    for base_point in baseline.latency.compact:
        batch = base_point.batch
        point = current.latency.compact_at(batch)
        for label, quantile in PERCENTILES:
            name = f"latency {label} @ batch {batch}"
            if point is None:
                detail = "the report has no measurement at this batch size"
                items.append(CheckItem(name, None, None, None, "regressed", "latency", detail))
                continue
            now, then = _runs(current, point, quantile, mode), _runs(baseline, base_point, quantile, mode)
            if isinstance(now, str) or isinstance(then, str):
                why = f"the report {now}" if isinstance(now, str) else f"the baseline {then}"
                ms = getattr(base_point, f"{label}_ms"), getattr(point, f"{label}_ms")
                items.append(
                    CheckItem(name, *ms, None, "not gated", "latency", f"reported, not gated: {why}")
                )
                continue
            items.append(_item(name, label, now, then, quantile, mode, tolerance, confidence))
    return items


def _runs(report: Report, point: LatencyPoint, quantile: float, mode: LatencyMode) -> Runs | str:
    """The runs behind one percentile of one report (with the reference's, in relative mode), or
    why there are none to gate on."""
    rows = _rows(point, quantile)
    if rows is None:
        return "keeps no per-call times (written by an older deploysparse)"
    if mode.name != "relative":
        return Runs.of(rows)
    reference = getattr(report.latency, f"{mode.reference}_at")(point.batch)
    reference_rows = _rows(reference, quantile) if reference is not None else None
    if reference_rows is None or len(reference_rows) != len(rows):
        return f"has no {REFERENCE_NAMES[mode.reference or 'original']} timed in the same runs at this batch size"
    return Runs.of(rows, reference_rows)


def _rows(point: LatencyPoint, quantile: float) -> list[list[float]] | None:
    """Each run's calls; without them (an older report) each run's p50 stands for the run, which
    serves the median but not a tail percentile."""
    rows = point.samples()
    if rows is not None:
        return rows
    if quantile == 0.5:
        return [[run.p50_ms] for run in point.runs] or [[point.p50_ms]]
    return None


def _item(
    name: str,
    label: str,
    current: Runs,
    baseline: Runs,
    quantile: float,
    mode: LatencyMode,
    tolerance: float,
    confidence: float,
) -> CheckItem:
    kind = "ratio" if mode.name == "relative" else "latency"
    base, now = baseline.statistic(quantile), current.statistic(quantile)
    limit = base * (1 + tolerance)
    shown = CheckItem(name, base, now, limit, "not gated", kind)
    if mode.name == "none":
        return shown.but("not gated", mode.reason)
    needed = calls_to_gate(quantile)
    if min(current.calls, baseline.calls) < needed:
        fewer = current if current.calls <= baseline.calls else baseline
        whose = "the report" if fewer is current else "the baseline"
        detail = (
            f"reported, not gated: {label} of {whose}'s {fewer.calls} calls rests on "
            f"{int(fewer.calls * (1 - quantile))} beyond it; gated from {needed} calls "
            "(bench.iters x bench.repeats)"
        )
        return shown.but("not gated", detail)
    if min(current.runs, baseline.runs) < MIN_RUNS:
        detail = f"an interval needs at least {MIN_RUNS} runs per report (bench.repeats); has {current.runs} and {baseline.runs}"
        return shown.but("inconclusive", detail)
    measured = change(current, baseline, quantile, confidence)
    verdict = _verdict(measured, tolerance)
    detail = _noise(current, quantile)
    if verdict == "inconclusive":
        detail += "; " + _to_decide(measured, tolerance)
    return CheckItem(name, base, now, limit, verdict, kind, detail, (measured.low, measured.high))


def _verdict(measured: Change, tolerance: float) -> Verdict:
    if measured.low > tolerance:
        return "regressed"
    if measured.high <= tolerance:
        return "pass"
    return "inconclusive"


def _noise(runs: Runs, quantile: float) -> str:
    """Runs x calls, the run-to-run spread and the outlier runs of the report's measurement."""
    per_run = runs.per_run(quantile)
    calls = runs.calls // runs.runs
    text = f"{runs.runs} runs x {calls} call{'s' if calls > 1 else ''}, runs vary ±{spread(per_run):.1%}"
    outliers = outlier_runs(per_run)
    if outliers:
        median = float(np.median(per_run))
        shifts = ", ".join(f"{i + 1} ({per_run[i] / median - 1:+.0%})" for i in outliers)
        text += f"; outlier run{'s' if len(outliers) > 1 else ''} {shifts}"
    return text


def _to_decide(measured: Change, tolerance: float) -> str:
    runs = measured.runs_to_decide(tolerance)
    width = (measured.high - measured.low) / 2
    text = f"the interval (±{width:.1%}) straddles the +{tolerance:.0%} tolerance"
    if runs is None:
        return text + ": the baseline's own noise is too wide; record it again with more runs (bench.repeats)"
    return text + f": about {runs} runs (bench.repeats) would decide"
