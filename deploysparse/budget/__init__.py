"""Budgets: what a plan may remove (`Budget`, its options declared once) and the allocations that
turn per-channel scores into kept channels under it.

- options.py: `Budget`, one field per option with its help, range and role (the CLI, recipes and
  sweeps derive their options from it).
- allocation.py: --ratio and --flops-target, one global score threshold found by bisection; the
  legal kept counts of a group; `make_plan`.
- outcome.py: what came of a budget: the target asked, the value reached, whether it was met, and
  the groups --max-layer-ratio held.
- latency.py: --latency-target, the threshold or HALP's knapsack on a measured latency model,
  re-aimed by measurement.
"""

from deploysparse.budget.allocation import (
    FLOPS_TOLERANCE,
    Allocation,
    BudgetTarget,
    GroupBudget,
    ThresholdPath,
    allocate,
    cap_count,
    finish,
    first_met,
    first_within,
    group_budgets,
    held_channels,
    legal_counts,
    macs_counter,
    make_plan,
    rank_scores,
)
from deploysparse.budget.latency import LatencyAllocation, allocate_latency
from deploysparse.budget.options import (
    DEAD,
    DEFAULT_MAX_LAYER_RATIO,
    DEFAULT_ROUND_TO,
    LATENCY_ALLOCATIONS,
    TARGETS,
    Budget,
    Interval,
    Option,
    budget_field,
    describe_targets,
    flag,
    option_fields,
    option_of,
    value_type,
)
from deploysparse.budget.outcome import BudgetOutcome, CappedGroup, describe_capped

__all__ = [
    "DEAD",
    "DEFAULT_MAX_LAYER_RATIO",
    "DEFAULT_ROUND_TO",
    "FLOPS_TOLERANCE",
    "LATENCY_ALLOCATIONS",
    "TARGETS",
    "Allocation",
    "Budget",
    "BudgetOutcome",
    "BudgetTarget",
    "CappedGroup",
    "GroupBudget",
    "Interval",
    "LatencyAllocation",
    "Option",
    "ThresholdPath",
    "allocate",
    "allocate_latency",
    "budget_field",
    "cap_count",
    "describe_capped",
    "describe_targets",
    "finish",
    "first_met",
    "first_within",
    "flag",
    "group_budgets",
    "held_channels",
    "legal_counts",
    "macs_counter",
    "make_plan",
    "option_fields",
    "option_of",
    "rank_scores",
    "value_type",
]
