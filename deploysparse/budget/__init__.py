"""Budgets: what a plan may remove (`Budget`, its options declared once) and the allocations that
turn per-channel scores into kept channels under it.

- options.py: `Budget`, one field per option with its help, range and role (the CLI, recipes and
  sweeps derive their options from it).
- allocation.py: --ratio and --flops-target, one global score threshold found by bisection; the
  legal kept counts of a group; `make_plan`.
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
    finish,
    first_met,
    first_within,
    group_budgets,
    legal_counts,
    macs_counter,
    make_plan,
    rank_scores,
)
from deploysparse.budget.latency import LatencyAllocation, allocate_latency
from deploysparse.budget.options import (
    DEAD,
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

__all__ = [
    "DEAD",
    "DEFAULT_ROUND_TO",
    "FLOPS_TOLERANCE",
    "LATENCY_ALLOCATIONS",
    "TARGETS",
    "Allocation",
    "Budget",
    "BudgetTarget",
    "GroupBudget",
    "Interval",
    "LatencyAllocation",
    "Option",
    "ThresholdPath",
    "allocate",
    "allocate_latency",
    "budget_field",
    "describe_targets",
    "finish",
    "first_met",
    "first_within",
    "flag",
    "group_budgets",
    "legal_counts",
    "macs_counter",
    "make_plan",
    "option_fields",
    "option_of",
    "rank_scores",
    "value_type",
]
