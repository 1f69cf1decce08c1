"""Pruning criteria by name, and `plan_with`: scores -> budget -> plan for one criterion.

Every criterion scores a group's channels (higher = more important); a few add a step of their own:
PFP allocates the budget itself (one global eps), similarity re-chooses the kept channels by
clustering and merges the rest into them, inactive reports the channels that never fire as dead.

The registry (`register_criterion`) is the one list of criteria: --criterion's choices, the names a
recipe and a sweep accept, and the errors that list them are read from it when they are needed, so a
criterion registered from outside the package is accepted everywhere. `dead` is no criterion: it
removes the analysis' provably constant filters, which every plan removes first, and ranks nothing,
so it takes no budget target (`budget_for`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deploysparse.budget import DEAD, Budget, allocate_latency, describe_targets, make_plan
from deploysparse.criteria.base import Criterion, CriterionContext
from deploysparse.criteria.bn_scale import BN_SCALE
from deploysparse.criteria.inactive import INACTIVE
from deploysparse.criteria.magnitude import L1, L2
from deploysparse.criteria.pfp import PFP, PFP_RANDOM
from deploysparse.criteria.similarity import SIMILARITY
from deploysparse.errors import CalibrationError, UsageError

CRITERIA: dict[str, Criterion] = {}  # the registry: name -> criterion; change it with register_criterion

__all__ = [
    "CRITERIA",
    "CriterionContext",
    "budget_for",
    "criterion_names",
    "get_criterion",
    "make_criterion_plan",
    "plan_with",
    "register_criterion",
    "takes_budget",
    "unregister_criterion",
]


def register_criterion(name: str, criterion: Criterion, *, replace: bool = False) -> Criterion:
    """Teach the package a criterion: `prune --criterion NAME`, `api.prune(criterion=NAME)`, recipes
    and sweeps accept it from now on, without editing the package.

    `criterion` implements the Criterion protocol (`name`, `needs_data`, `score`, and any of the
    optional extras `plan_with` looks up) and calls itself `name`. A criterion already registered
    under the name is an error unless `replace=True`, so two libraries cannot silently override each
    other. Returns the criterion.
    """
    if not isinstance(criterion, Criterion):
        raise TypeError(f"criterion {name!r}: needs name, needs_data and score(group, ctx) (Criterion)")
    if criterion.name != name:
        raise ValueError(f"criterion registered as {name!r} calls itself {criterion.name!r}")
    if name == DEAD:
        raise ValueError(f"{DEAD!r} names the analysis' dead filters, which every plan removes first")
    if name in CRITERIA and not replace:
        raise ValueError(f"a criterion named {name!r} is already registered (pass replace=True to override)")
    CRITERIA[name] = criterion
    return criterion


def unregister_criterion(name: str) -> None:
    """Forget the criterion registered under `name` (nothing when there is none)."""
    CRITERIA.pop(name, None)


for _builtin in (L1, L2, BN_SCALE, INACTIVE, PFP, PFP_RANDOM, SIMILARITY):
    register_criterion(_builtin.name, _builtin)


def criterion_names() -> tuple[str, ...]:
    """What --criterion, a recipe and a sweep accept now: `dead` and every registered criterion."""
    return (DEAD, *CRITERIA)


def get_criterion(name: str) -> Criterion:
    """The criterion registered under `name`; UsageError listing the known names otherwise."""
    try:
        return CRITERIA[name]
    except KeyError:
        raise UsageError(
            f"--criterion {name}: unknown; choose one of {', '.join(sorted(CRITERIA))}"
        ) from None


def takes_budget(name: str) -> bool:
    """Whether criterion `name` spends a budget's target: every registered criterion ranks channels
    and does; `dead` removes the provably constant filters whatever the budget."""
    if name == DEAD:
        return False
    get_criterion(name)  # an unknown name is a UsageError, not a criterion without a budget
    return True


def budget_for(criterion: str, budget: Budget) -> Budget:
    """The budget `criterion` runs under: the whole budget for a criterion that ranks; for `dead` a
    target is an error (UsageError naming the criteria that rank) and of the limits only round_to
    applies (a recipe's limits wait for a ranking criterion)."""
    if takes_budget(criterion):
        return budget
    if budget.targeted:
        raise UsageError(
            f"criterion {criterion} takes no budget ({describe_targets(budget)}): it removes only the "
            f"provably constant filters; a target needs a criterion that ranks channels: {', '.join(CRITERIA)}"
        )
    return Budget(round_to=budget.round_to)


def plan_with(
    criterion: str | Criterion,
    ga: Any,
    ctx: CriterionContext,
    budget: Budget | None = None,
    *,
    dead: dict[str, np.ndarray] | None = None,
    latency: Any = None,
) -> Any:
    """A Plan for `ga` by one criterion under one budget (see deploysparse.budget for its meaning).

    dead: channels known to be constant (from the analysis); they go first and free.
    latency: the LatencyModel a --latency-target is met with (deploysparse.latency); every criterion,
    PFP included, then hands its scores to the latency allocation.
    """
    crit = get_criterion(criterion) if isinstance(criterion, str) else criterion
    budget = budget or Budget()
    if crit.needs_data and not ctx.has_data:
        raise CalibrationError(f"criterion {crit.name} reads activations: pass calibration data (--calib)")
    check_model = getattr(crit, "check_model", None)
    if check_model is not None:
        check_model(ga.groups, ga)
    prunable = [g for g in ga.groups if g.prunable]
    dead = {gid: np.asarray(v, dtype=np.int64) for gid, v in (dead or {}).items()}
    notes: list[str] = []
    find_dead = getattr(crit, "dead", None)
    if find_dead is not None:
        found = 0
        for group in prunable:
            extra = find_dead(group, ctx)
            if len(extra):
                dead[group.id] = np.union1d(dead.get(group.id, np.zeros(0, np.int64)), extra)
                found += len(extra)
        notes.append(
            f"{crit.name}: {found} channels were zero on all {ctx.num_points or 'given'} calibration points; "
            "removing them is exact on those inputs only, unseen inputs may activate them"
        )
    scores: dict[str, np.ndarray] = {}
    allocation = None
    own_allocation = getattr(crit, "allocate", None)
    if own_allocation is not None and budget.latency_target is None:
        allocation = own_allocation(ga, ctx, budget, dead=dead)
    else:
        for group in prunable:
            value = crit.score(group, ctx)
            if value is not None:
                scores[group.id] = value
            elif group.id not in dead:
                notes.append(
                    f"{crit.name}: group {group.id} ({group.label}) has nothing to score; left whole"
                )
        if budget.latency_target is not None:
            if latency is None:
                raise UsageError("--latency-target needs a latency model of the target backend")
            allocation = allocate_latency(ga.groups, scores, budget, latency, dead)
    plan = make_plan(ga, scores, budget, dead=dead, criterion=crit.name, allocation=allocation)
    merge = getattr(crit, "merges", None)
    if merge is not None:
        for gid, keep in list(plan.keep.items()):
            plan.keep[gid], entries = merge(ga.group(gid), ctx, keep, dead.get(gid, np.zeros(0, np.int64)))
            if entries:
                plan.merges[gid] = entries
    plan.notes = notes + plan.notes
    return plan


def make_criterion_plan(
    ga: Any,
    criterion: str,
    budget: Budget,
    *,
    dead: Any = None,
    feeds: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    values_fn: Any = None,
    latency: Any = None,
) -> Any:
    """The API's entry point: `dead` is the analysis' DeadFilters (its channels go first, their
    constants are folded into the consumers), `feeds` the calibration data, `seed` PFP's sampling,
    `values_fn` another source of activations (the PyTorch front end's forward hooks)."""
    ctx = CriterionContext(ga, calib=feeds, rng=np.random.default_rng(seed), values_fn=values_fn)
    plan = plan_with(
        criterion, ga, ctx, budget, dead=dict(dead.channels) if dead is not None else None, latency=latency
    )
    if dead is not None:
        plan.constants = dict(dead.constants)
    return plan
