"""How much of the model the pinned spaces hold, per pinning op and reason.

A list of pinned spaces says *that* channels are pinned; a user whose budget was not met needs to
know *how much* each kind of pin costs: "Transpose (transpose moves the channel axis): 36 groups,
85% of the MACs" says at once which rule is missing. A group is counted for every op that pins any
of its channels, and what it holds is what removing all of the groups a pin touches would free:
the MACs and parameters of every layer that reads or writes their channels (graph.cost with those
groups kept at 0 channels), so the shares of one kind never count a layer twice. Groups no filter
produces count too: the output of a MatMul without a rule has no producer because the pin stopped
the rule, and its layer is exactly what the pin holds. The model's own inputs and outputs are
reported like any pin (op `graph`); `prune`'s line about a missed budget leaves them out.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass

from deploysparse.graph.analysis import GraphAnalysis
from deploysparse.graph.cost import CostModel


@dataclass(frozen=True)
class PinShare:
    """What one kind of pin (op and reason) holds: groups, channels, and shares of MACs and params."""

    op: str
    reason: str
    groups: int
    channels: int
    macs_share: float
    params_share: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """`Transpose (transpose moves the channel axis): 36 groups, 85.1% of MACs, 80.2% of params`."""
        plural = "s" if self.groups != 1 else ""
        return (
            f"{self.op} ({self.reason}): {self.groups} group{plural}, {self.macs_share:.1%} of MACs, "
            f"{self.params_share:.1%} of params"
        )


def pin_shares(ga: GraphAnalysis, cost: CostModel | None = None) -> list[PinShare]:
    """Per (op, reason) of the pinned spaces, most MACs first."""
    cost = cost or CostModel(ga)
    groups: dict[tuple[str, str], set[str]] = defaultdict(set)
    channels: dict[tuple[str, str], int] = defaultdict(int)
    for space in ga.pinned:
        groups[(space.op, space.reason)].add(space.group)
        channels[(space.op, space.reason)] += space.channels
    whole = cost.cost()
    shares = []
    for (op, reason), held in groups.items():
        freed = cost.cost({gid: 0 for gid in held})
        shares.append(
            PinShare(
                op=op,
                reason=reason,
                groups=len(held),
                channels=channels[(op, reason)],
                macs_share=_share(whole.macs - freed.macs, whole.macs),
                params_share=_share(whole.params - freed.params, whole.params),
            )
        )
    return sorted(shares, key=lambda s: (-s.macs_share, -s.params_share, s.op, s.reason))


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0
