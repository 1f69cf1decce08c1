"""One check of the gate and its verdict: what every part of the gate builds and every output prints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

# pass: within the limit; regressed: beyond it (for latency: the whole interval); inconclusive: the
# noise is wider than the tolerance leaves room for; not gated: reported only, the detail says why.
Verdict = Literal["pass", "regressed", "inconclusive", "not gated"]


@dataclass(frozen=True)
class CheckItem:
    """One comparison: a metric, its baseline and current value, the worst value allowed, the verdict
    and, for latency, the confidence interval of the relative change."""

    name: str
    baseline: float | None
    current: float | None
    limit: float | None
    verdict: Verdict
    kind: str  # "latency" (ms), "ratio" (compact / reference), "count", "fraction" or "flag"
    detail: str = ""
    interval: tuple[float, float] | None = None  # (low, high) of current / baseline - 1

    @property
    def passed(self) -> bool:
        """Nothing to act on: within the limit, or reported without a limit."""
        return self.verdict in ("pass", "not gated")

    def but(self, verdict: Verdict, detail: str) -> CheckItem:
        """This item with another verdict and detail."""
        return dataclasses.replace(self, verdict=verdict, detail=detail)

    @property
    def change(self) -> str:
        """The change from baseline, relative for latency, ratios and counts, in points for fractions."""
        if self.baseline is None or self.current is None or self.kind == "flag":
            return ""
        if self.kind == "fraction":
            return f"{(self.current - self.baseline) * 100:+.2f} pt"
        if self.baseline == 0:
            return "+0.0%" if self.current == 0 else "new"
        return f"{(self.current / self.baseline - 1) * 100:+.1f}%"

    @property
    def interval_text(self) -> str:
        """The interval of the change, e.g. '+2.1% .. +13.9%' ('' without one)."""
        if self.interval is None:
            return ""
        low, high = self.interval
        return f"{low * 100:+.1f}% .. {high * 100:+.1f}%"

    def show(self, value: float | None) -> str:
        if value is None:
            return "missing"
        if self.kind == "latency":
            return f"{value:.3f} ms"
        if self.kind == "ratio":
            return f"{value:.3f}x"
        if self.kind == "count":
            return f"{int(value):,}"
        if self.kind == "fraction":
            return f"{value:.4f}"
        return "yes" if value else "no"
