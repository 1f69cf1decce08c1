"""Random pruning plans: the strongest check of surgery is that ANY legal plan gives a compact model
equal to the original with the removed channels zeroed (the masked original).
"""

from __future__ import annotations

import numpy as np

from deploysparse.graph.analysis import GraphAnalysis
from deploysparse.graph.masking import zero_channels
from deploysparse.graph.surgery import rewrite_graph
from deploysparse.plan import Plan
from tests.exporting import random_feeds, relative_error, run, weight_count


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


def assert_random_plans_match_masked(
    ga: GraphAnalysis, base_seed: int, seeds: tuple[int, ...] = (0, 1, 2), tolerance: float = 1e-5
) -> None:
    """For each seed a random legal plan: it removes channels and weights, changes the original's
    outputs (live channels went), and the compact model equals the masked original to `tolerance` on
    fresh random inputs, output by output."""
    for seed in seeds:
        rng = np.random.default_rng([base_seed, seed])
        plan = random_plan(ga, rng)
        assert removed_count(ga, plan) > 0
        masked = zero_channels(ga, plan)
        compact = rewrite_graph(ga, plan).model
        assert weight_count(compact) < weight_count(ga.model)

        feeds = random_feeds(ga.model, rng, batch=2)
        original_out = run(ga.model, feeds)
        masked_out = run(masked, feeds)
        compact_out = run(compact, feeds)
        assert any(relative_error(a, b) > 1e-4 for a, b in zip(original_out, masked_out, strict=True)), (
            f"seed {seed}: masking changed nothing, the plan removed only dead channels"
        )
        for i, (a, b) in enumerate(zip(masked_out, compact_out, strict=True)):
            assert a.shape == b.shape, f"seed {seed}, output {i}: shape {b.shape}, expected {a.shape}"
            err = relative_error(a, b)
            assert err < tolerance, (
                f"seed {seed}, output {i}: compact vs masked original, relative error {err:.3g}"
            )
