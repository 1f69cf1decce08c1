"""What came of a budget: the target asked, the value the plan reached, whether that counts as met,
and where --max-layer-ratio held a group the ranking wanted to cut further.

A plan that misses its target is still a valid model (the closest the constraints allow), so a
miss is no error: `prune` says it in one line with what holds the model back (the pinned spaces,
deploysparse.graph.pinned), and its JSON and report.json carry `budget_met: false`; `--strict` (a
recipe's `prune: strict: true`) turns a miss into exit code 3. What "met" means, per target:

- --ratio R: the live channels removed are within max(1, FLOPS_TOLERANCE x scope) channels of
  round(R x scope), where the scope is every channel of the model's filters except the model's own
  inputs and outputs, --protect'ed groups and dead channels (removed free). Channels an op pins
  are in the scope: a ratio the pins leave out of reach is not met.
- --flops-target F: the MACs kept are within FLOPS_TOLERANCE (2 points) of F.
- --latency-target L: the compact model measured (or, without a measurement, predicted) at most
  L x (1 + latency TOLERANCE, 5%) of the original; a latency target is a ceiling.
- no target (the dead criterion, a saved --plan): nothing was asked beyond what was done: met.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from deploysparse.budget.options import flag

# What each target measures, for the one line a miss prints.
_MEASURES = {
    "ratio": "of the channels removed",
    "flops_target": "of the MACs kept",
    "latency_target": "of the original's latency kept",
}


@dataclass(frozen=True)
class CappedGroup:
    """A group the ranking wanted to cut below what --max-layer-ratio allows, and what it kept."""

    group: str
    label: str
    channels: int
    wanted: int  # kept count the ranking (or PFP's eps) asked for
    kept: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BudgetOutcome:
    """How a plan stands against its target: `asked` and `reached` in the target's own unit (a
    fraction of channels removed, of MACs kept, of latency kept) and `met` by the rule above."""

    target: str  # the Budget field: ratio, flops_target or latency_target
    asked: float
    reached: float
    tolerance: float  # the allowed distance, in the target's unit
    met: bool

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> BudgetOutcome:
        """The outcome `to_json` wrote (a prune summary's or report.json's `budget`)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

    def describe(self) -> str:
        """`--ratio 0.3 not met: 4.1% of the channels removed (asked 30.0% +- 2.0%)`."""
        verdict = "met" if self.met else "not met"
        bound = "at most " if self.target == "latency_target" else ""
        spread = "" if self.target == "latency_target" else f" ± {self.tolerance:.1%}"
        return (
            f"{flag(self.target)} {self.asked:g} {verdict}: {self.reached:.1%} {_MEASURES[self.target]} "
            f"(asked {bound}{self.asked:.1%}{spread})"
        )


def describe_capped(capped: list[CappedGroup], max_layer_ratio: float, shown: int = 5) -> str:
    """One line naming the groups --max-layer-ratio held: label (channels): wanted -> kept."""
    items = "; ".join(f"{c.label or c.group} ({c.channels}): {c.wanted} -> {c.kept}" for c in capped[:shown])
    more = f"; +{len(capped) - shown} more (`capped` in --json)" if len(capped) > shown else ""
    return (
        f"--max-layer-ratio {max_layer_ratio:g} kept {len(capped)} group{'s' if len(capped) != 1 else ''} "
        f"the ranking would have cut further (channels: wanted -> kept): {items}{more}"
    )
