"""Turning per-channel scores into a plan that meets a budget.

The budget is global: channels of every group are ranked together by their (normalised) scores and a
single threshold decides which go. Each group then snaps its kept count to the nearest *legal* count:
a multiple of --round-to (and of the grouped-conv block count), at least --min-channels and every
pinned channel, at most the original, and above what --max-layer-ratio (0.9 by default) allows it
to lose. Because snapping is monotone in the threshold, a bisection over the sorted scores finds the
threshold whose plan comes closest to the target: a fraction of the model's channels removed
(--ratio; the channels an op pins count, the model's own inputs and outputs do not) or a fraction of
the original MACs kept (--flops-target, within 2 percentage points). A target the constraints put
out of reach gets the closest plan and a BudgetOutcome that says it was not met
(deploysparse.budget.outcome), never an error.

Dead channels (constant output, found by the analysis or by a data criterion) are removed before the
ranking and do not use up the budget: --ratio R removes R of the channels that are still alive, and
--flops-target counts the MACs they free like any other (the target is a fraction of the original).
A dead channel is kept only where a group would otherwise fall below its minimum count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deploysparse.budget.options import Budget
from deploysparse.budget.outcome import BudgetOutcome, CappedGroup, describe_capped
from deploysparse.errors import PlanError, UsageError
from deploysparse.graph.groups import ChannelGroup

FLOPS_TOLERANCE = 0.02


@dataclass
class GroupBudget:
    """One group's constraints, precomputed: which channels are pinned, dead, live; the legal counts."""

    group: ChannelGroup
    scores: np.ndarray | None
    pinned: np.ndarray  # bool mask
    dead: np.ndarray  # bool mask (never pinned)
    legal: np.ndarray  # sorted legal kept counts
    rounding_met: bool = True
    cap: int = 0  # the kept count --max-layer-ratio holds the group at, where no other limit is higher
    # --round-to leaves no count below the group's size though its other limits would (a grouped
    # conv's 55 blocks and --round-to 8 have no common multiple below 440)
    whole_by_rounding: bool = False

    @property
    def live(self) -> np.ndarray:
        return ~self.pinned & ~self.dead

    @property
    def live_count(self) -> int:
        return int(self.live.sum())

    def wanted_at(self, threshold: float) -> int:
        """Kept count before snapping when every live channel scoring <= threshold goes."""
        if self.scores is None:
            return self.group.size - int(self.dead.sum())
        return int(self.pinned.sum()) + int((self.scores[self.live] > threshold).sum())

    def snap(self, wanted: int) -> int:
        """The legal kept count nearest to `wanted` (ties: the larger)."""
        position = int(np.searchsorted(self.legal, wanted))
        if position == 0:
            return int(self.legal[0])
        if position == len(self.legal):
            return int(self.legal[-1])
        below, above = int(self.legal[position - 1]), int(self.legal[position])
        return above if above - wanted <= wanted - below else below

    def choose(self, count: int) -> np.ndarray:
        """The kept channel indices for a kept count: pinned first, then live, then dead, by score,
        the same number in every block."""
        block = self.group.block
        per_block = count // block
        block_size = self.group.size // block
        scores = self.scores if self.scores is not None else np.zeros(self.group.size)
        kept: list[np.ndarray] = []
        for b in range(block):
            channels = np.arange(b * block_size, (b + 1) * block_size)
            tier = np.where(self.pinned[channels], 0, np.where(self.dead[channels], 2, 1))
            order = np.lexsort((-scores[channels], tier))
            kept.append(channels[order[:per_block]])
        return np.sort(np.concatenate(kept))


def legal_counts(
    size: int,
    block: int,
    pinned: np.ndarray,
    dead: np.ndarray,
    *,
    min_channels: int,
    max_layer_ratio: float | None,
    round_to: int,
) -> tuple[np.ndarray, bool]:
    """Kept counts a group may take, and whether --round-to could be honoured.

    With `block` parts, each part keeps the same number, so counts step by the block count and the
    floor is set by the part with the most pinned channels; the ceiling (all dead removed) by the part
    with the most dead ones. Rounding: a group smaller than `round_to` is not rounded (no kernel block
    fits it either way); a group whose size is not a multiple of it (odd by design, e.g. 3 or 10
    channels) may also keep its original count.
    """
    floor, ceiling = _count_bounds(size, block, pinned, dead, min_channels)
    lowest = max(floor, min(ceiling, cap_count(size, block, max_layer_ratio)))
    if size < round_to:
        round_to = 1
    step = math.lcm(max(round_to, 1), block)
    top = ceiling if step == block else size  # rounding may keep a dead channel (exact) to reach a multiple
    counts = np.arange(_round_up(lowest, step), top + 1, step)
    if counts.size:
        if size % step:  # odd by design: keeping the group whole stays legal
            counts = np.append(counts, size)
        return counts, True
    return np.arange(lowest, ceiling + 1, block), round_to <= 1


def _count_bounds(
    size: int, block: int, pinned: np.ndarray, dead: np.ndarray, min_channels: int
) -> tuple[int, int]:
    """(fewest, most) channels a group may keep before --max-layer-ratio and rounding: the floor set
    by --min-channels and the part with the most pinned channels, the ceiling by the part with the
    most dead ones (all dead removed)."""
    block_size = size // block
    pinned_parts = pinned.reshape(block, block_size).sum(axis=1)
    dead_parts = dead.reshape(block, block_size).sum(axis=1)
    floor = min(block * max(math.ceil(min_channels / block), int(pinned_parts.max())), size)
    return floor, max(block * (block_size - int(dead_parts.max())), floor)


def cap_count(size: int, block: int, max_layer_ratio: float | None) -> int:
    """The fewest channels --max-layer-ratio lets a group of `size` keep (0: no cap)."""
    if max_layer_ratio is None:
        return 0
    return _round_up(math.ceil(size * (1.0 - max_layer_ratio)), block)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


@dataclass
class Allocation:
    """Kept channels per group id (only groups that lose channels), notes for the user, how the plan
    stands against the target (None without one) and the groups --max-layer-ratio held."""

    keep: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outcome: BudgetOutcome | None = None
    capped: list[CappedGroup] = field(default_factory=list)


def group_budgets(
    groups: list[ChannelGroup],
    scores: dict[str, np.ndarray | None],
    budget: Budget,
    dead: dict[str, np.ndarray] | None = None,
) -> list[GroupBudget]:
    """The groups a plan may touch (prunable, not protected, scored or with dead channels), with
    their constraints."""
    protected = _resolve_protect(groups, budget.protect)
    dead = dead or {}
    return [
        _group_budget(g, scores.get(g.id), dead.get(g.id), budget)
        for g in groups
        if g.prunable and g.id not in protected and (g.id in scores or g.id in dead)
    ]


def held_channels(groups: list[ChannelGroup], budget: Budget) -> int:
    """Channels of the model's filters that an op pins, outside --protect'ed groups: what a --ratio
    counts although no plan can remove them (ChannelGroup.held_by_ops)."""
    protected = _resolve_protect(groups, budget.protect)
    return sum(g.held_by_ops for g in groups if g.producers and g.id not in protected)


@dataclass
class BudgetTarget:
    """Measures a candidate plan (kept count per group) against --ratio or --flops-target.

    `excess` is positive when the candidate keeps too much and falls as more is removed, so every
    search (the threshold bisection here, PFP's root search over eps) looks for its sign change.
    `held`: channels an op pins (held_channels), which --ratio counts besides the live ones.
    """

    budgets: list[GroupBudget]
    budget: Budget
    macs_of: Callable[[dict[str, int]], int] | None = None
    held: int = 0

    @classmethod
    def of(
        cls,
        groups: list[ChannelGroup],
        budgets: list[GroupBudget],
        budget: Budget,
        macs_of: Callable[[dict[str, int]], int] | None = None,
    ) -> BudgetTarget:
        """The target of `budget` over `budgets`, counting the channels ops pin in `groups`."""
        return cls(budgets, budget, macs_of, held_channels(groups, budget))

    def __post_init__(self) -> None:
        self.ratio = self.budget.ratio
        self.flops_target = self.budget.flops_target
        if self.flops_target is not None:
            if self.macs_of is None:
                raise UsageError("--flops-target needs a cost model (macs_of)")
            self.original_macs = self.macs_of({})
            if self.original_macs <= 0:
                raise PlanError("--flops-target: the model has no counted MACs (no Conv/Gemm/MatMul)")
        self.alive = {b.group.id: b.live_count + int(b.pinned.sum()) for b in self.budgets}
        self.live = sum(b.live_count for b in self.budgets)
        self.scope = self.live + self.held
        self.target_removed = round((self.ratio or 0.0) * self.scope)

    @property
    def active(self) -> bool:
        return self.ratio is not None or self.flops_target is not None

    def removed(self, counts: dict[str, int]) -> int:
        """Live channels a candidate removes (dead ones not counted)."""
        return sum(alive - min(counts[g], alive) for g, alive in self.alive.items())

    def kept_fraction(self, counts: dict[str, int]) -> float:
        return self.macs_of(counts) / self.original_macs

    def excess(self, counts: dict[str, int]) -> float:
        if self.ratio is not None:
            return (self.target_removed - self.removed(counts)) / max(self.scope, 1)
        if self.flops_target is not None:
            return self.kept_fraction(counts) - self.flops_target
        return 0.0

    def outcome(self, counts: dict[str, int]) -> BudgetOutcome | None:
        """How the chosen candidate stands against the target (deploysparse.budget.outcome for what
        met means); None without a ratio or FLOPs target."""
        if self.ratio is not None:
            scope = max(self.scope, 1)
            allowed = max(1.0, FLOPS_TOLERANCE * self.scope)
            got = self.removed(counts)
            met = self.scope > 0 and abs(got - self.target_removed) <= allowed
            return BudgetOutcome("ratio", self.ratio, got / scope, allowed / scope, met)
        if self.flops_target is not None:
            reached = self.kept_fraction(counts)
            met = abs(reached - self.flops_target) <= FLOPS_TOLERANCE
            return BudgetOutcome("flops_target", self.flops_target, reached, FLOPS_TOLERANCE, met)
        return None


def allocate(
    groups: list[ChannelGroup],
    scores: dict[str, np.ndarray | None],
    budget: Budget,
    *,
    macs_of: Callable[[dict[str, int]], int] | None = None,
    dead: dict[str, np.ndarray] | None = None,
) -> Allocation:
    """The budget search on its own: groups and scores in, kept channel indices out.

    macs_of(keep_counts) -> MACs of the model with those kept counts (needed for flops_target).
    Without ratio or flops_target only the dead channels go.
    """
    budgets = group_budgets(groups, scores, budget, dead)
    target = BudgetTarget.of(groups, budgets, budget, macs_of)
    path = ThresholdPath(budgets)
    best = 0
    if target.active and budgets:
        best = first_within(lambda i: target.excess(path.counts(i)), len(path))
    counts = path.counts(best)
    allocation = Allocation(outcome=target.outcome(counts))
    finish(allocation, budgets, counts, budget, path.wanted(best))
    return allocation


class ThresholdPath:
    """The plans one global score threshold gives, from removing nothing but the dead channels
    (step 0) to removing every live channel a group may lose (the last step): at step i every
    live channel at or below the i-th lowest score goes, and each group snaps to its nearest legal
    count. A --flops-target or --ratio walks it by MACs or channels, a --latency-target by predicted
    latency (deploysparse.budget.latency): the same ranking, whichever budget is spent.

    Builds the budgets' global ranks (rank_scores) in place."""

    def __init__(self, budgets: list[GroupBudget]) -> None:
        self.budgets = budgets
        rank_scores(budgets)
        live_scores = [b.scores[b.live] for b in budgets if b.scores is not None]
        self.thresholds = np.array([-np.inf])
        if live_scores:
            self.thresholds = np.concatenate([self.thresholds, np.sort(np.concatenate(live_scores))])

    def __len__(self) -> int:
        return len(self.thresholds)

    def counts(self, step: int) -> dict[str, int]:
        """Kept count per group at this step."""
        return {
            b.group.id: b.snap(wanted)
            for b, wanted in zip(self.budgets, self.wanted(step).values(), strict=True)
        }

    def wanted(self, step: int) -> dict[str, int]:
        """Kept count per group at this step before snapping to a legal count: what the ranking asks."""
        return {b.group.id: b.wanted_at(float(self.thresholds[step])) for b in self.budgets}


def rank_scores(budgets: list[GroupBudget]) -> None:
    """Replace scores by their global rank (ties broken by group order, then channel index).

    Only the order matters to a threshold, and unique ranks let it split tied channels (exact
    duplicates score the same) one at a time.
    """
    scored = [b for b in budgets if b.scores is not None]
    if not scored:
        return
    values = np.concatenate([b.scores for b in scored])
    group_order = np.concatenate([np.full(b.group.size, i) for i, b in enumerate(scored)])
    channel = np.concatenate([np.arange(b.group.size) for b in scored])
    ranks = np.empty(len(values))
    ranks[np.lexsort((channel, group_order, values))] = np.arange(len(values), dtype=np.float64)
    start = 0
    for b in scored:
        b.scores = ranks[start : start + b.group.size]
        start += b.group.size


def finish(
    allocation: Allocation,
    budgets: list[GroupBudget],
    counts: dict[str, int],
    budget: Budget,
    wanted: dict[str, int] | None = None,
) -> None:
    """Fill the allocation's kept channels from chosen counts, with notes on unmet rounding and, given
    what the ranking `wanted` before snapping, on the groups --max-layer-ratio held (`capped`, and a
    note) and those --round-to left whole."""
    for b in budgets:
        if counts[b.group.id] < b.group.size:
            allocation.keep[b.group.id] = b.choose(counts[b.group.id])
        if not b.rounding_met:
            allocation.notes.append(
                f"group {b.group.id} ({b.group.label}): no multiple of --round-to {budget.round_to} fits its limits"
            )
    allocation.capped = [
        CappedGroup(b.group.id, b.group.label, b.group.size, wanted[b.group.id], counts[b.group.id])
        for b in budgets
        if wanted is not None and b.cap and wanted[b.group.id] < b.cap
    ]
    if allocation.capped:
        allocation.notes.append(describe_capped(allocation.capped, budget.max_layer_ratio))
    whole = [
        b for b in budgets if wanted is not None and b.whole_by_rounding and wanted[b.group.id] < b.group.size
    ]
    if whole:
        allocation.notes.append(_describe_whole(whole, budget.round_to))


def _describe_whole(whole: list[GroupBudget], round_to: int, shown: int = 5) -> str:
    """One line naming the groups the ranking wanted to cut that --round-to left whole."""
    items = "; ".join(
        f"{b.group.label or b.group.id} ({b.group.size} channels"
        + (f", {b.group.block} grouped-conv blocks)" if b.group.block > 1 else ")")
        for b in whole[:shown]
    )
    more = f"; +{len(whole) - shown} more" if len(whole) > shown else ""
    plural = "s" if len(whole) != 1 else ""
    return (
        f"--round-to {round_to} left {len(whole)} group{plural} whole that the ranking would cut (no smaller "
        f"multiple of {round_to} that a grouped conv's blocks share evenly): {items}{more}"
    )


def first_within(excess: Callable[[int], float], n: int) -> int:
    """Index in [0, n) whose excess (falling with the index) is closest to zero: the sign change
    (first_met), then the better of its two neighbours (ties: the one that removes less)."""
    lo = first_met(excess, n)
    candidates = [i for i in (lo - 1, lo) if 0 <= i < n]
    return min(candidates, key=lambda i: (abs(excess(i)), i))


def first_met(excess: Callable[[int], float], n: int) -> int:
    """The first index in [0, n) whose excess (falling with the index) is <= 0, by bisection; n - 1
    when none is."""
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if excess(mid) > 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _group_budget(
    group: ChannelGroup,
    scores: np.ndarray | None,
    dead: np.ndarray | None,
    budget: Budget,
) -> GroupBudget:
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (group.size,):
            raise PlanError(f"group {group.id}: {scores.shape[0]} scores for {group.size} channels")
        if not np.all(np.isfinite(scores)):
            raise PlanError(f"group {group.id} ({group.label}): the criterion produced non-finite scores")
    pinned = np.zeros(group.size, dtype=bool)
    pinned[np.asarray(group.pinned_channels, dtype=np.int64)] = True
    dead_mask = np.zeros(group.size, dtype=bool)
    if dead is not None and len(dead):
        dead_mask[np.asarray(dead, dtype=np.int64)] = True
    dead_mask &= ~pinned
    legal, met = legal_counts(
        group.size,
        group.block,
        pinned,
        dead_mask,
        min_channels=budget.min_channels,
        max_layer_ratio=budget.max_layer_ratio,
        round_to=budget.round_to,
    )
    floor, ceiling = _count_bounds(group.size, group.block, pinned, dead_mask, budget.min_channels)
    cap = cap_count(group.size, group.block, budget.max_layer_ratio)
    whole = legal.tolist() == [group.size] and max(floor, cap) < group.size
    return GroupBudget(
        group, scores, pinned, dead_mask, legal, met, cap if floor < cap <= ceiling else 0, whole
    )


def _resolve_protect(groups: list[ChannelGroup], protect: Iterable[str]) -> set[str]:
    """Group ids named directly or through one of their producer nodes."""
    protected: set[str] = set()
    for name in protect:
        hits = {g.id for g in groups if g.id == name or any(m.node == name for m in g.producers)}
        if not hits:
            raise UsageError(f"--protect {name}: no group id or producer node has that name")
        protected |= hits
    return protected


def make_plan(
    ga: Any,
    scores: dict[str, np.ndarray | None],
    budget: Budget,
    *,
    dead: dict[str, np.ndarray] | None = None,
    criterion: str = "",
    allocation: Allocation | None = None,
) -> Any:
    """A Plan for `ga` from per-group scores (higher = more important) and one budget (or from an
    `allocation` made elsewhere: a --latency-target's, deploysparse.budget.latency, with its timings,
    or a criterion's own, PFP's with its scales)."""
    from deploysparse.plan import Plan

    if allocation is None:
        allocation = allocate(ga.groups, scores, budget, macs_of=macs_counter(ga), dead=dead)
    latency_ms = {
        k: getattr(allocation, k)
        for k in ("predicted_ms", "original_ms", "measured_ms", "measured_original_ms", "corrections")
        if getattr(allocation, k, None) is not None
    }
    return Plan(
        keep=allocation.keep,
        scales=getattr(allocation, "scales", {}),
        criterion=criterion,
        notes=allocation.notes,
        latency=latency_ms,
        outcome=allocation.outcome,
        capped=allocation.capped,
    )


def macs_counter(ga: Any) -> Callable[[dict[str, int]], int]:
    """MACs of `ga` for kept counts per group, with the cost model built once for the whole search."""
    from deploysparse.graph.cost import CostModel

    model = CostModel(ga)
    return lambda keep: model.cost(keep).macs
