"""Spending a --latency-target: which channels go so that the model keeps a fraction of its latency.

The latency model (deploysparse.latency) predicts the model's latency at any kept channel counts from
per-layer tables measured on the target backend; this module allocates against it, next to the
threshold allocation of --ratio and --flops-target (deploysparse.budget.allocation) that it reuses.

Two allocations choose where to cut, each group at one of its legal counts (honouring --round-to,
--min-channels, pinned channels). The default, "threshold", is the --flops-target ranking walked by
predicted latency: one global threshold on the criterion's scores, the lowest that the prediction
meets (ThresholdPath). "knapsack" keeps the most importance (the sum of the kept channels'
scores) under the predicted latency, as HALP does: a greedy pass (repeatedly the step that loses the
least importance per millisecond saved) gives a feasible start; then the multiple-choice knapsack is
solved exactly by dynamic programming on the latency model linearised around the current answer,
and re-linearised around each answer (a layer's time depends on two groups' widths). The knapsack
needs scores that compare across layers (HALP's are loss-based Taylor scores); this package's are
normalised by their group's mean, so every channel is worth about 1 to it and it strips the layers
where a channel costs the most time. Measured on digits-trained MobileNetV2 and ResNet-50 at equal
predicted latency, it kept less accuracy than the threshold (docs/benchmarks.md), so it is opt-in.

Then it is measured, as NetAdapt (Yang et al. ECCV 2018) does: one-layer models miss what layers
share inside the whole graph (layout conversions, fused activations, cache reuse), so the table's
savings can be off, and by more at some widths than at others. The compact model of the
allocation is built and timed against the original, run by run; when it misses the target by more
than TOLERANCE, the allocation runs again aimed at the table fraction that the measurements so far map
to the target (a secant step on a monotone calibration curve, `Calibration`), at most CORRECTIONS
times. The prediction reported for the final plan is the calibrated one made before it was measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from deploysparse.budget.allocation import (
    Allocation,
    GroupBudget,
    ThresholdPath,
    finish,
    first_met,
    group_budgets,
)
from deploysparse.budget.options import Budget
from deploysparse.budget.outcome import BudgetOutcome

if TYPE_CHECKING:
    from deploysparse.latency import LatencyModel

CORRECTIONS = 4  # re-allocations after measuring the compact model
TOLERANCE = 0.05  # a measured latency within 5% of the target needs no correction
GAIN_LIMITS = (0.5, 2.0)  # measured savings per table saving below the lowest measurement: clamped
KNAPSACK_BINS = 10_000  # the exact knapsack's latency resolution: 1/10,000 of the room to spend
EXACT_ROUNDS = 3  # linearisations of the latency model around the knapsack's last answer


def allocate_latency(
    groups: list[Any],
    scores: dict[str, np.ndarray | None],
    budget: Budget,
    model: LatencyModel,
    dead: dict[str, np.ndarray] | None = None,
) -> Allocation:
    """Meet budget.latency_target x the original's latency: the budget's allocation (threshold or
    knapsack) on the table's prediction, then (when the model can measure) the compact model timed
    and the allocation run again, aimed at the table fraction the measurements so far map to the
    target (Calibration), while the measurement misses. Of the measured allocations the one kept is
    the most important one that met the target (within TOLERANCE), or else the fastest: a
    measurement a busy machine disturbed cannot make the answer worse."""
    budgets = [b for b in group_budgets(groups, scores, budget, dead) if b.scores is not None or b.dead.any()]
    loss = {b.group.id: _sorted_scores(b) for b in budgets}  # before ThresholdPath ranks the scores
    counts_for = _allocator(budget.latency_allocation, budgets, loss, model)
    original = model.predict({})
    calibration = Calibration()
    aim = budget.latency_target
    tried: list[tuple[LatencyAllocation, dict[str, int]]] = []
    history: list[str] = []
    while True:
        counts, wanted = counts_for(aim)
        table_fraction = model.predict(counts) / original
        allocation = LatencyAllocation(
            predicted_ms=calibration.fraction(table_fraction) * original,
            original_ms=original,
            corrections=len(calibration.points),
        )
        finish(allocation, budgets, counts, budget, wanted)
        tried.append((allocation, counts))
        measure = getattr(model, "measure", None)
        if measure is None:
            break
        allocation.measured_original_ms, allocation.measured_ms = measure(allocation.keep)
        fraction = allocation.measured_ms / allocation.measured_original_ms
        calibration.points.append((table_fraction, fraction))
        if abs(fraction / budget.latency_target - 1.0) <= TOLERANCE or len(calibration.points) > CORRECTIONS:
            break
        history.append(
            f"--latency-target {budget.latency_target}: predicted {allocation.predicted_ms / original:.1%}, "
            f"measured {fraction:.1%} of the original; recalibrated the table and allocated again"
        )
        aim = calibration.table_fraction(budget.latency_target)
    allocation = _best_measured(tried, loss, budget.latency_target)
    allocation.notes[:0] = history
    allocation.notes.append(
        f"--latency-target {budget.latency_target}: predicted {allocation.predicted_ms:.3g} ms of "
        f"{original:.3g} ms ({allocation.predicted_ms / original:.1%}) on {model.backend} at batch {model.batch}"
    )
    if allocation.predicted_ms > budget.latency_target * original * 1.02:
        allocation.notes.append(
            "latency target not reached under the constraints (pinned, --min-channels, --round-to)"
        )
    allocation.outcome = _outcome(allocation, budget.latency_target)
    return allocation


def _outcome(allocation: LatencyAllocation, target: float) -> BudgetOutcome:
    """The measured fraction of the original's latency (the predicted one when nothing was
    measured) against the target: met at most TOLERANCE above it, as `_best_measured` accepts."""
    if allocation.measured_ms is not None and allocation.measured_original_ms:
        reached = allocation.measured_ms / allocation.measured_original_ms
    else:
        reached = allocation.predicted_ms / allocation.original_ms if allocation.original_ms else 1.0
    return BudgetOutcome(
        "latency_target", target, reached, target * TOLERANCE, reached <= target * (1 + TOLERANCE)
    )


@dataclass
class Calibration:
    """What the table's predicted fraction of the original's latency turned out to be, measured.

    A monotone piecewise-linear map through the measurements and (1, 1) (nothing removed: the
    original); below the lowest measurement, the table's savings scaled by that measurement's ratio
    of measured to predicted savings (clamped to GAIN_LIMITS). With no measurement it is the
    identity. Aiming the allocation at `table_fraction(target)` is a secant step towards the target,
    interpolated once a measurement lies on each side of it."""

    points: list[tuple[float, float]] = field(default_factory=list)  # (table fraction, measured fraction)

    def _curve(self) -> tuple[np.ndarray, np.ndarray, float]:
        table, measured = map(np.asarray, zip(*sorted([(1.0, 1.0), *self.points]), strict=True))
        # A disturbed reading must not make it non-monotone, nor a compact model slower than the
        # original (a tiny model's microseconds: thread wake-ups outweigh the work removed).
        measured = np.minimum(np.maximum.accumulate(measured), 1.0)
        lowest_saving = 1.0 - table[0]
        gain = (1.0 - measured[0]) / lowest_saving if lowest_saving > 0 else 1.0
        return table, measured, min(max(gain, GAIN_LIMITS[0]), GAIN_LIMITS[1])

    def fraction(self, table_fraction: float) -> float:
        """The measured fraction the table's `table_fraction` stands for."""
        table, measured, gain = self._curve()
        if table_fraction >= table[0]:
            return float(np.interp(table_fraction, table, measured))
        return float(measured[0] - gain * (table[0] - table_fraction))

    def table_fraction(self, fraction: float) -> float:
        """The table fraction to aim at for a measured `fraction` (the inverse of `fraction`)."""
        table, measured, gain = self._curve()
        if fraction >= measured[0]:
            return float(np.interp(fraction, measured, table))
        return max(float(table[0] - (measured[0] - fraction) / gain), 0.0)


def _best_measured(
    tried: list[tuple[LatencyAllocation, dict[str, int]]], loss: dict[str, np.ndarray], target: float
) -> LatencyAllocation:
    """The most important allocation measured within TOLERANCE of the target, else the fastest one
    measured (the last one when none was measured)."""
    timed = [(a, c) for a, c in tried if a.measured_ms is not None and a.measured_original_ms]
    if not timed:
        return tried[-1][0]
    met = [(a, c) for a, c in timed if a.measured_ms / a.measured_original_ms <= target * (1 + TOLERANCE)]
    if met:
        return max(met, key=lambda pair: _kept_value(loss, pair[1]))[0]
    return min(timed, key=lambda pair: pair[0].measured_ms / pair[0].measured_original_ms)[0]


def _kept_value(loss: dict[str, np.ndarray], counts: dict[str, int]) -> float:
    """Importance kept: the sum of each group's `counts[g]` highest scores."""
    return sum(float(loss[g][:n].sum()) for g, n in counts.items() if g in loss)  # loss: sorted, descending


def _allocator(
    kind: str, budgets: list[GroupBudget], loss: dict[str, np.ndarray], model: LatencyModel
) -> Callable[[float], tuple[dict[str, int], dict[str, int] | None]]:
    """Kept counts per group for a fraction of the original's predicted latency to aim at, by the
    allocation `kind` (Budget.latency_allocation), with what the ranking wanted before snapping
    (None for the knapsack, which only weighs legal counts)."""
    if kind == "knapsack":
        return lambda aim: (_knapsack(budgets, loss, aim, model), None)
    path = ThresholdPath(budgets)
    return lambda aim: _on_threshold_path(path, aim, model)


def _on_threshold_path(
    path: ThresholdPath, target: float, model: LatencyModel
) -> tuple[dict[str, int], dict[str, int]]:
    """The plan on the global-threshold path with the lowest threshold whose prediction meets
    target x the original's (the last step when none does), and what the ranking wanted there."""
    limit = target * model.predict({})
    step = first_met(lambda step: model.predict(path.counts(step)) - limit, len(path))
    return path.counts(step), path.wanted(step)


def _knapsack(
    budgets: list[GroupBudget], loss: dict[str, np.ndarray], target: float, model: LatencyModel
) -> dict[str, int]:
    """Kept counts per group that keep the most importance while the prediction meets target x the
    original's: the greedy's answer, improved by the exact knapsack around it."""
    limit = target * model.predict({})
    counts = _greedy(budgets, loss, limit, model)
    return _exact(budgets, loss, limit, model, counts)


def _greedy(
    budgets: list[GroupBudget], loss: dict[str, np.ndarray], limit: float, model: LatencyModel
) -> dict[str, int]:
    """From every group at its largest legal count (dead channels gone), take the step that loses the
    least importance per millisecond saved until the prediction is at most `limit`."""
    counts = {b.group.id: b.snap(b.wanted_at(-np.inf)) for b in budgets}
    now = model.predict(counts)
    while now > limit:
        best, best_ratio = None, math.inf
        for b in budgets:
            gid = b.group.id
            lower = b.legal[b.legal < counts[gid]]
            if b.scores is None or not lower.size:
                continue
            new = int(lower[-1])
            saved = _saved(model, counts, gid, new)
            if saved <= 0:
                continue
            lost = float(loss[gid][new : counts[gid]].sum())
            if lost / saved < best_ratio:
                best, best_ratio = (gid, new), lost / saved
        if best is None:
            break
        counts[best[0]] = best[1]
        now = model.predict(counts)
    return counts


def _exact(
    budgets: list[GroupBudget],
    loss: dict[str, np.ndarray],
    limit: float,
    model: LatencyModel,
    counts: dict[str, int],
) -> dict[str, int]:
    """The multiple-choice knapsack solved exactly by dynamic programming (as HALP's solver does),
    on the latency model linearised at `counts`: each group's latency at each legal count with the
    other groups held where they are. A layer reads two groups' widths, so the linearisation is
    redone around each answer (EXACT_ROUNDS times); an answer is taken only if the full model
    predicts it within `limit` and it keeps more importance than the best so far. Costs are rounded
    up to 1/KNAPSACK_BINS of the room, so the linearised answer never exceeds it."""
    choosers = [b for b in budgets if b.scores is not None and b.legal.size > 1]
    kept = {b.group.id: np.concatenate([[0.0], np.cumsum(loss[b.group.id])]) for b in budgets}
    best = dict(counts) if model.predict(counts) <= limit else None
    current = dict(counts)
    for _ in range(EXACT_ROUNDS):
        if not choosers:
            break
        deltas, values = [], []
        for b in choosers:
            gid = b.group.id
            now = _touched_ms(model, current, gid)
            delta = [_touched_ms(model, {**current, gid: int(c)}, gid) - now for c in b.legal]
            deltas.append(np.asarray(delta))
            values.append(kept[gid][np.minimum(b.legal, len(kept[gid]) - 1)])
        room = limit - model.predict(current) - sum(float(d.min()) for d in deltas)
        if room <= 0:
            break
        unit = room / KNAPSACK_BINS
        costs = [np.ceil((d - d.min()) / unit - 1e-9).astype(np.int64) for d in deltas]
        picks = _solve(costs, values, KNAPSACK_BINS)
        current = {**current, **{b.group.id: int(b.legal[k]) for b, k in zip(choosers, picks, strict=True)}}
        if model.predict(current) <= limit and (
            best is None or _kept_value(loss, current) > _kept_value(loss, best)
        ):
            best = dict(current)
    return best if best is not None else counts


def _solve(costs: list[np.ndarray], values: list[np.ndarray], capacity: int) -> list[int]:
    """Multiple-choice knapsack: one option per group, total integer cost <= capacity, most value.
    Dynamic programming over capacities; returns each group's option index."""
    best = np.zeros(capacity + 1)  # best value at total cost <= w, no group chosen yet
    choice = np.zeros((len(costs), capacity + 1), dtype=np.int64)
    for g, (cost, value) in enumerate(zip(costs, values, strict=True)):
        new = np.full(capacity + 1, -np.inf)
        for option, (c, v) in enumerate(zip(cost, value, strict=True)):
            if c > capacity:
                continue
            candidate = np.full(capacity + 1, -np.inf)
            candidate[c:] = best[: capacity + 1 - c] + v
            better = candidate > new
            new[better] = candidate[better]
            choice[g, better] = option
        best = new
    picks, w = [], capacity
    for g in range(len(costs) - 1, -1, -1):
        option = int(choice[g, w])
        picks.append(option)
        w -= int(costs[g][option])
    return picks[::-1]


@dataclass
class LatencyAllocation(Allocation):
    """An allocation with the latency the table predicts for it and for the original (ms)."""

    predicted_ms: float = 0.0
    original_ms: float = 0.0
    measured_ms: float | None = None  # the compact model of this allocation, timed (LatencyModel.measure)
    measured_original_ms: float | None = None
    corrections: int = 0  # how many times the table was recalibrated before this allocation


def _sorted_scores(b: GroupBudget) -> np.ndarray:
    """Scores of the live and pinned channels, most important first: keeping k costs the tail."""
    scores = b.scores if b.scores is not None else np.zeros(b.group.size)
    kept = ~b.dead
    return np.sort(np.asarray(scores, dtype=np.float64)[kept])[::-1]


def _touched_ms(model: LatencyModel, counts: dict[str, int], gid: str) -> float:
    """Predicted milliseconds of the layers whose widths group `gid` sets, at these counts."""
    return sum(model.layer_ms(i, counts) for i in model.touches.get(gid, []))


def _saved(model: LatencyModel, counts: dict[str, int], gid: str, new: int) -> float:
    return _touched_ms(model, counts, gid) - _touched_ms(model, {**counts, gid: new}, gid)
