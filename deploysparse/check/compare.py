"""The CI gate: compare a run's report with a committed baseline and give each check a verdict.

Latency is judged with statistics (check/latency.py): the change of each percentile and its
confidence interval from the repeated runs, in milliseconds on the baseline's machine and relative to
the original timed in the same run elsewhere. Accuracy and top-1 agreement may fall by an absolute
tolerance, and the compact model's parameters and FLOPs may not grow at all: those come from a fixed
validation set and exact counts, so one number decides them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deploysparse.check.items import CheckItem, Verdict
from deploysparse.check.latency import LatencyMode, choose_mode, latency_items
from deploysparse.report.schema import Report, parse_report
from deploysparse.timing_stats import CONFIDENCE

DEFAULT_LATENCY_TOLERANCE = 0.10
DEFAULT_ACCURACY_TOLERANCE = 0.005

# deploysparse check's exit code per verdict (1 and 2 as every command: regression, bad input).
EXIT_CODES: dict[Verdict, int] = {"pass": 0, "not gated": 0, "regressed": 1, "inconclusive": 4}


@dataclass(frozen=True)
class Tolerances:
    latency: float = DEFAULT_LATENCY_TOLERANCE  # relative growth allowed for p50 and p99
    accuracy: float = DEFAULT_ACCURACY_TOLERANCE  # absolute drop allowed for accuracy and top-1 agreement
    confidence: float = CONFIDENCE  # of the latency change's interval (two-sided)


@dataclass
class CheckResult:
    items: list[CheckItem]
    tolerances: Tolerances
    mode: LatencyMode
    notes: list[str] = field(default_factory=list)  # differences that make the comparison less meaningful

    @property
    def verdict(self) -> Verdict:
        """regressed if any check regressed, else inconclusive if any could not be decided, else pass."""
        verdicts = {item.verdict for item in self.items}
        return next((v for v in ("regressed", "inconclusive") if v in verdicts), "pass")

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def failures(self) -> list[CheckItem]:
        """The checks that regressed."""
        return [item for item in self.items if item.verdict == "regressed"]

    @property
    def undecided(self) -> list[CheckItem]:
        """The checks whose noise was wider than the tolerance."""
        return [item for item in self.items if item.verdict == "inconclusive"]


def resolve_tolerances(
    report: Report,
    latency: float | None = None,
    accuracy: float | None = None,
    confidence: float | None = None,
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
        confidence=confidence if confidence is not None else CONFIDENCE,
    )


def compare_reports(
    report: Report | dict[str, Any],
    baseline: Report | dict[str, Any],
    tolerances: Tolerances | None = None,
    latency_mode: str = "auto",
) -> CheckResult:
    """Judge `report` against `baseline`; tolerances default to those of the report's recipe, the
    latency mode to `auto` (milliseconds on the baseline's machine, else relative to the original)."""
    current = report if isinstance(report, Report) else parse_report(report, "report")
    base = baseline if isinstance(baseline, Report) else parse_report(baseline, "baseline")
    tol = tolerances or resolve_tolerances(current)
    mode = choose_mode(current, base, latency_mode)
    items = [
        CheckItem(
            "validation passed",
            1.0 if base.validation.passed else 0.0,
            1.0 if current.validation.passed else 0.0,
            1.0,
            "pass" if current.validation.passed else "regressed",
            "flag",
            "; ".join(current.validation.failures),
        ),
        _no_growth("params after pruning", base.cost.params_after, current.cost.params_after),
        _no_growth("FLOPs after pruning", base.cost.flops_after, current.cost.flops_after),
        *latency_items(current, base, mode, tol.latency, tol.confidence),
    ]
    items.extend(
        item
        for name, read in _ACCURACY_METRICS
        if (item := _no_drop(name, read(base.validation), read(current.validation), tol.accuracy)) is not None
    )
    return CheckResult(items, tol, mode, _notes(current, base))


_ACCURACY_METRICS: list[tuple[str, Callable[[Any], float | None]]] = [
    ("top-1 agreement", lambda v: v.top1_agreement),
    ("accuracy (compact)", lambda v: v.accuracy_compact),
]


def _no_growth(name: str, baseline: int, current: int) -> CheckItem:
    return CheckItem(
        name, baseline, current, baseline, "pass" if current <= baseline else "regressed", "count"
    )


def _no_drop(name: str, baseline: float | None, current: float | None, tolerance: float) -> CheckItem | None:
    """A fraction may fall by `tolerance`; a metric the baseline has but the report lacks fails."""
    if baseline is None:
        return None
    limit = baseline - tolerance
    if current is None:
        return CheckItem(
            name, baseline, None, limit, "regressed", "fraction", "the report does not measure it"
        )
    return CheckItem(
        name, baseline, current, limit, "pass" if current >= limit - 1e-12 else "regressed", "fraction"
    )


def _notes(current: Report, base: Report) -> list[str]:
    """Differences the verdicts do not account for (the machine is the latency mode's business)."""
    notes = []
    if current.model.sha256 != base.model.sha256:
        notes.append(
            f"the model differs from the baseline's (sha256 {current.model.sha256[:12]} vs {base.model.sha256[:12]})"
        )
    for key in ("backend", "precision"):
        now, then = getattr(current.target, key), getattr(base.target, key)
        if now != then:
            notes.append(
                f"target {key} differs from the baseline's ({now!r} vs {then!r}): latency is not comparable"
            )
    for name, report in (("the report", current), ("the baseline", base)):
        busy = _busy(report)
        if busy:
            notes.append(f"{name} was measured on a busy machine ({busy}): expect wide intervals")
    return notes


def _busy(report: Report) -> str:
    """'load average 19.9 on 2 cores' when more work waited for the CPUs than the process could use."""
    timing, machine = report.latency.timing, report.latency.fingerprint
    if timing is None or machine is None:
        return ""
    load = max((value for value in timing.load_average if value is not None), default=0.0)
    return f"load average {load:.1f} on {machine.cores} cores" if load > machine.cores else ""
