"""Random pruning plans: the strongest check of surgery is that ANY legal plan gives a compact model
equal to the original with the removed channels zeroed (the masked original).
"""

from __future__ import annotations

import numpy as np

from deploysparse.graph.analysis import GraphAnalysis
from deploysparse.plan import Plan


def random_keep(size: int, block: int, pinned: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random sorted subset of range(size): the same count in each of `block` equal contiguous parts,
    every pinned channel kept, at least one channel per part, and (where pins allow) at least one
    channel removed."""
    per = size // block
    pinned_set = {int(c) for c in pinned}
    parts = [range(b * per, (b + 1) * per) for b in range(block)]
    least = max(1, *(sum(c in pinned_set for c in part) for part in parts))
    count = int(rng.integers(least, max(least, per - 1) + 1))
    kept: list[int] = []
    for part in parts:
        forced = [c for c in part if c in pinned_set]
        free = [c for c in part if c not in pinned_set]
        extra = rng.choice(free, size=count - len(forced), replace=False) if count > len(forced) else []
        kept += forced + [int(c) for c in extra]
    return np.array(sorted(kept), dtype=np.int64)


def random_plan(ga: GraphAnalysis, rng: np.random.Generator) -> Plan:
    """Keep a random legal subset of every prunable group (see `random_keep`)."""
    keep = {
        g.id: random_keep(g.size, max(1, g.block), g.pinned_channels, rng) for g in ga.groups if g.prunable
    }
    return Plan(keep=keep, criterion="random")


def removed_count(ga: GraphAnalysis, plan: Plan) -> int:
    """Channels the plan removes, summed over groups."""
    return sum(ga.group(gid).size - len(kept) for gid, kept in plan.keep.items())
