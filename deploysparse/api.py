"""The Python API: the same verbs as the CLI (analyze, prune, apply a plan), on paths or ModelProtos.

from deploysparse import api
result = api.prune("model.onnx", criterion="dead")
deploysparse.modelio.save_model(result.model, "compact.onnx")
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from deploysparse.backends.denormal_cost import DenormalCost, measure_cost
from deploysparse.budget import DEAD, DEFAULT_ROUND_TO, Budget, BudgetOutcome
from deploysparse.denormals import DenormalCount, count_denormals, flush_denormals
from deploysparse.errors import UsageError
from deploysparse.graph.analysis import GraphAnalysis, analyze_graph
from deploysparse.graph.channels import INTERFACE_OP
from deploysparse.graph.cost import CostModel, count_cost
from deploysparse.graph.dead import DEFAULT_DEAD_THRESHOLD, DeadFilters, find_dead
from deploysparse.graph.pinned import PinShare, pin_shares
from deploysparse.graph.rules import ops_with, runs_int8
from deploysparse.graph.shapes import skeleton
from deploysparse.graph.surgery import SurgeryResult, rewrite_graph
from deploysparse.modelio import check_model, load_model
from deploysparse.plan import Plan
from deploysparse.run_shapes import RunShapes, resolve_shapes

ModelLike = str | os.PathLike[str] | onnx.ModelProto
CalibLike = str | os.PathLike[str] | Mapping[str, np.ndarray] | None


@dataclass
class Analysis:
    """What `deploysparse analyze` reports: groups, pinned spaces, cost and dead filters."""

    graph: GraphAnalysis
    dead: DeadFilters
    params: int
    flops: int
    denormals: DenormalCount
    denormal_cost: DenormalCost | None = None
    shapes: RunShapes | None = None  # the input shapes analysed at, and where they came from

    @property
    def groups(self):
        return self.graph.groups

    @property
    def pinned(self):
        return self.graph.pinned

    def to_json(self) -> dict:
        groups = []
        for g in self.graph.groups:
            groups.append(
                {
                    "id": g.id,
                    "label": g.label,
                    "channels": g.size,
                    "prunable": g.prunable,
                    "pinned_channels": len(g.pinned_channels),
                    "block": g.block,
                    "dead": len(self.dead.channels.get(g.id, [])),
                    "producers": sorted({m.node for m in g.producers}),
                    "params": sorted({f"{m.node}:{m.name}" for m in g.params}),
                    "consumers": sorted({m.node for m in g.consumers}),
                }
            )
        return {
            "input_shapes": self.shapes.to_json() if self.shapes else None,
            "params": self.params,
            "flops": self.flops,
            "groups": groups,
            "prunable_groups": sum(1 for g in self.graph.groups if g.prunable),
            "pinned": [p.to_json() for p in self.graph.pinned],
            "dead": {gid: [int(c) for c in ch] for gid, ch in self.dead.channels.items()},
            "dead_total": self.dead.count,
            "warnings": list(self.dead.kept),
            "denormals": {
                **self.denormals.to_json(),
                "latency": self.denormal_cost.to_json() if self.denormal_cost else None,
            },
        }


@dataclass
class PruneResult:
    """The compact model, the plan that made it, and the summary `prune --json` prints."""

    model: onnx.ModelProto
    plan: Plan
    summary: dict
    surgery: SurgeryResult
    graph: GraphAnalysis


def as_model(model: ModelLike) -> onnx.ModelProto:
    """Load a path, or pass a ModelProto through."""
    return model if isinstance(model, onnx.ModelProto) else load_model(model)


def _require_layers(ga: GraphAnalysis, model: ModelLike, name: str | None = None) -> None:
    """A model with no op that carries filters (Conv, Gemm, ... : ops whose rule counts MACs) has
    nothing to prune: say so, naming the file, instead of writing an unchanged copy."""
    if not any(att.role == "producer" for att in ga.attachments):
        name = name or ("the model" if isinstance(model, onnx.ModelProto) else str(model))
        ops = ops_with(lambda rule: rule.macs is not None)
        why = f"has no {', '.join(ops[:-1])} or {ops[-1]} with constant weights: nothing to prune"
        if runs_int8(ga.model.graph):  # its layers are integer kernels: prune the float model it came from
            why += " (the model is already quantised: prune the float model it was quantised from)"
        raise UsageError(f"{name}: {why}")


def _check_dead_threshold(value: float) -> None:
    """A negative or NaN threshold would silently find nothing (every comparison with NaN is false)."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise UsageError(f"--dead-threshold must be a finite number >= 0, got {value!r}")


def load_feeds(calib: CalibLike, model: onnx.ModelProto) -> dict[str, np.ndarray] | None:
    """Calibration data checked against the model's inputs (None when not given)."""
    if calib is None:
        return None
    from deploysparse.calibration import load_calibration

    return load_calibration(calib, model)


def analyze(
    model: ModelLike,
    *,
    calib: CalibLike = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    dead_threshold: float = DEFAULT_DEAD_THRESHOLD,
    time_denormals: bool = True,
) -> Analysis:
    """Channel groups, pinned spaces, params/FLOPs and dead filters of a model.

    When the model carries denormal float32 weights and `time_denormals` is on, the model is also
    timed as it is and flushed, side by side on ONNX Runtime CPU, to say what they cost here.
    """
    _check_dead_threshold(dead_threshold)
    proto = as_model(model)
    feeds = load_feeds(calib, proto)
    shapes = resolve_shapes(proto, input_shapes, feeds)
    ga = analyze_graph(proto, shapes.shapes, copy=proto is model)
    _require_layers(ga, model)
    dead = find_dead(ga, dead_threshold, feeds)
    cost = count_cost(ga)
    denormals = count_denormals(ga.model)
    denormal_cost = None
    if denormals.total and time_denormals:
        denormal_cost = measure_cost(ga.model, ga.input_shapes)
    return Analysis(
        graph=ga,
        dead=dead,
        params=cost.params,
        flops=cost.macs,
        denormals=denormals,
        denormal_cost=denormal_cost,
        shapes=shapes,
    )


def dead_plan(ga: GraphAnalysis, dead: DeadFilters, round_to: int = DEFAULT_ROUND_TO) -> Plan:
    """A plan that removes the dead filters, folding their constants into consumers. With round_to > 1
    some stay so that kept counts are multiples of it (`keep_all_but`); the near-zero ones are put
    back first, so an exactly constant filter is removed before an inexact one."""
    none = np.zeros(0, dtype=np.int64)
    removed = {
        gid: np.concatenate(
            [np.setdiff1d(channels, dead.inexact.get(gid, none)), dead.inexact.get(gid, none)]
        )
        for gid, channels in dead.channels.items()
    }
    return Plan(keep=keep_all_but(ga, removed, round_to), constants=dict(dead.constants), criterion="dead")


def keep_all_but(
    ga: GraphAnalysis, removed: Mapping[str, np.ndarray], round_to: int = DEFAULT_ROUND_TO
) -> dict[str, np.ndarray]:
    """group id -> kept indices, from group id -> removed indices. With round_to > 1 a few removed
    channels are put back so kept counts are multiples of it (fast kernels want them; keeping a
    dead channel is always exact). Groups smaller than round_to are not rounded (as in budget.py's
    legal_counts); grouped-conv groups keep their per-block balance instead."""
    keep = {}
    for gid, gone in removed.items():  # the last of each group's `gone` are put back first
        group = ga.group(gid)
        gone = np.asarray(gone, dtype=np.int64)
        if 1 < round_to <= group.size and group.block == 1:
            kept = group.size - len(gone)
            target = min(group.size, -(-kept // round_to) * round_to)
            gone = gone[: len(gone) - (target - kept)]
        if len(gone):
            keep[gid] = np.setdiff1d(np.arange(group.size), gone)
    return keep


def prune(
    model: ModelLike,
    *,
    criterion: str = "dead",
    calib: CalibLike = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    plan: Plan | str | os.PathLike[str] | None = None,
    dead_threshold: float = DEFAULT_DEAD_THRESHOLD,
    module=None,
    keep_denormals: bool = False,
    budget: Budget | None = None,
    name: str | None = None,
    **budget_fields,
) -> PruneResult:
    """Prune `model` with a criterion and budget, or apply a saved plan; return the compact model.

    Dead filters are always removed first, at no cost to the budget. `budget` (a Budget) or its
    fields as keywords (`flops_target=0.5`, see deploysparse.budget.Budget) go to the criterion.
    `module`: the nn.Module the ONNX model was exported from (names kept); criteria then read
    activations through its forward hooks instead of ONNX Runtime. Denormal float32 weights left
    in the compact model are set to zero (`denormals_flushed` in the summary) unless
    `keep_denormals`: an output change below float32's resolution that x86 CPUs can be slow on.
    `name`: what errors call a model given as a ModelProto (its file, when the caller loaded it).
    """
    _check_dead_threshold(dead_threshold)
    chosen_budget = Budget.of(budget, **budget_fields)
    proto = as_model(model)
    feeds = load_feeds(calib, proto)
    original = proto if proto is model else None  # a caller's ModelProto stays untouched
    shapes = resolve_shapes(proto, input_shapes, feeds)
    ga = analyze_graph(proto, shapes.shapes, copy=original is not None)
    _require_layers(ga, model, name)
    dead = find_dead(ga, dead_threshold, feeds)
    if plan is not None:
        chosen = plan if isinstance(plan, Plan) else Plan.load(plan, ga)
    elif criterion == DEAD:
        from deploysparse.criteria import budget_for

        chosen_budget = budget_for(DEAD, chosen_budget)  # no target; of the limits only the rounding
        chosen = dead_plan(ga, dead, chosen_budget.round_to)
    else:
        chosen = _criterion_plan(ga, criterion, dead, feeds, chosen_budget, module)
    surgery = rewrite_graph(ga, chosen)
    # The checker serialises whatever it is given: on the weight-free skeleton it checks the same
    # nodes, edges, types and opsets in under a millisecond instead of 0.4 s for a ResNet-50.
    check_model(skeleton(surgery.model))
    summary = summarize(ga, chosen, dead, chosen_budget.round_to)
    summary["input_shapes"] = shapes.to_json()
    if not keep_denormals:
        summary["denormals_flushed"] = flush_denormals(surgery.model).to_json()
    if not summary["exact"]:
        summary["output_change"] = measure_change(ga.model, surgery.model, feeds, ga)
    if chosen_budget.latency_target is not None and plan is None:
        summary["latency"] = _latency_summary(chosen_budget, chosen)
    return PruneResult(model=surgery.model, plan=chosen, summary=summary, surgery=surgery, graph=ga)


def _criterion_plan(
    ga: GraphAnalysis, criterion: str, dead: DeadFilters, feeds, budget: Budget, module
) -> Plan:
    from deploysparse.criteria import make_criterion_plan

    values_fn = None
    if module is not None and feeds is not None:
        from deploysparse.frontend.torch_stats import collect_torch_values

        def values_fn(names):
            return collect_torch_values(module, feeds, ga.model, names)

    latency = None
    if budget.latency_target is not None:
        from deploysparse.latency import latency_model

        latency = latency_model(ga, budget)
    return make_criterion_plan(
        ga, criterion, budget, dead=dead, feeds=feeds, values_fn=values_fn, latency=latency
    )


def _latency_summary(budget: Budget, plan: Plan) -> dict:
    """Predicted (from the table, before the model was built) and measured (original and compact
    alternately) latency: the allocation timed the compact model's structure (deploysparse.budget.latency)."""
    latency = plan.latency
    original_ms, compact_ms = latency["measured_original_ms"], latency["measured_ms"]
    return {
        "backend": budget.backend,
        "batch": budget.batch,
        "target": budget.latency_target,
        "allocation": budget.latency_allocation,
        "predicted_original_ms": latency.get("original_ms"),
        "predicted_ms": latency.get("predicted_ms"),
        "measured_original_ms": original_ms,
        "measured_ms": compact_ms,
        "measured_fraction": compact_ms / original_ms,
        "corrections": int(latency.get("corrections", 0)),
    }


def summarize(ga: GraphAnalysis, plan: Plan, dead: DeadFilters, round_to: int = DEFAULT_ROUND_TO) -> dict:
    """The keys scripts rely on: params/flops before and after, groups, channels removed, pinned,
    what became of the dead filters (`dead`: found, removed, kept, and why) and whether the budget
    was met (`budget_met`, `budget`, `capped`, `pinned_by_op`): a target not met is also one warning
    naming what the pins hold."""
    cost = CostModel(ga)
    before = cost.cost()
    after = cost.cost(plan.keep)
    removed = plan.removed_count(ga)
    groups = [
        {
            "id": g.id,
            "label": g.label,
            "channels": g.size,
            "kept": g.size - removed[g.id],
            "removed": removed[g.id],
            "dead": len(dead.channels.get(g.id, [])),
            "prunable": g.prunable,
        }
        for g in ga.groups
    ]
    shares = pin_shares(ga, cost)
    accounting = dead_accounting(ga, plan, dead, round_to)
    notes = list(plan.notes)
    if accounting["near_zero_removed"]:
        notes.append(
            f"{accounting['near_zero_removed']} near-zero filters removed (--dead-threshold): not exact, "
            "see output_change"
        )
    if plan.outcome is not None and not plan.outcome.met:
        notes.append(describe_unmet(plan.outcome, shares))
    return {
        "criterion": plan.criterion,
        "params_before": before.params,
        "params_after": after.params,
        "flops_before": before.macs,
        "flops_after": after.macs,
        "groups": groups,
        "channels_removed": int(sum(removed.values())),
        "dead_removed": accounting["removed"],
        "dead": accounting,
        "pinned": [p.to_json() for p in ga.pinned],
        "pinned_by_op": [share.to_json() for share in shares],
        "budget_met": plan.outcome is None or plan.outcome.met,
        "budget": plan.outcome.to_json() if plan.outcome is not None else None,
        "capped": [c.to_json() for c in plan.capped],
        "warnings": [*dead.kept, *([accounting["message"]] if accounting["kept"] else []), *notes],
        "exact": not accounting["near_zero_removed"] and plan.criterion in ("dead", ""),
    }


def describe_unmet(outcome: BudgetOutcome, shares: Sequence[PinShare], shown: int = 4) -> str:
    """The one line an unmet budget prints: the target, what was reached, and what holds the model
    (the kinds of pins with the most MACs, or the limits when no op pins anything)."""
    held = [s for s in shares if s.op != INTERFACE_OP]
    if held:
        more = f"; +{len(held) - shown} more (`pinned_by_op` in --json)" if len(held) > shown else ""
        why = "pinned: " + "; ".join(s.describe() for s in held[:shown]) + more
    else:
        why = "no op pins channels: the limits (--max-layer-ratio, --min-channels, --round-to, --protect) allow no closer fit"
    return f"budget not met: {outcome.describe()}; {why}"


def dead_accounting(ga: GraphAnalysis, plan: Plan, dead: DeadFilters, round_to: int) -> dict:
    """How many dead filters the analysis found, how many `plan` removes, how many it keeps and why,
    in numbers and as the one line prune and the report print:
    "13 dead found, 0 removed, 13 kept to hold multiples of 16 (`--round-to 1` removes all)"."""
    found = dead.count
    removed = _removed_of(ga, plan, dead.channels)
    kept = found - removed
    message = f"{found} dead found, {removed} removed"
    if kept and plan.criterion == DEAD and round_to > 1:
        message += f", {kept} kept to hold multiples of {round_to} (`--round-to 1` removes all)"
    elif kept:
        message += f", {kept} kept by the plan"
    return {
        "found": found,
        "removed": removed,
        "kept": kept,
        "round_to": round_to,
        "near_zero_removed": _removed_of(ga, plan, dead.inexact),
        "message": message,
    }


def _removed_of(ga: GraphAnalysis, plan: Plan, channels: Mapping[str, np.ndarray]) -> int:
    """How many of `channels` (group id -> indices) the plan removes."""
    return int(
        sum(len(np.setdiff1d(ids, plan.kept(gid, ga.group(gid).size))) for gid, ids in channels.items())
    )


def measure_change(
    original: onnx.ModelProto,
    compact: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray] | None,
    ga: GraphAnalysis,
) -> dict:
    """Largest absolute and relative output difference on the calibration data (or random data)."""
    from deploysparse.backends import reference_backend
    from deploysparse.backends.feeds import make_feeds

    data = dict(feeds) if feeds is not None else make_feeds(original, ga.input_shapes, min_batch=2)
    data = {k: v[:64] for k, v in data.items()}
    a = list(reference_backend().intermediates(original, data).values())
    b = list(reference_backend().intermediates(compact, data).values())
    max_abs = max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))
    scale = max(float(np.abs(x).max()) for x in a) or 1.0
    return {
        "max_abs": max_abs,
        "max_rel": max_abs / scale,
        "samples": int(next(iter(data.values())).shape[0]),
    }


def save_outputs(result: PruneResult, output: str | os.PathLike[str], plan_out: str | None = None) -> Path:
    """Write the compact model (and plan) atomically."""
    from deploysparse.modelio import save_model

    path = save_model(result.model, output)
    if plan_out:
        result.plan.save(plan_out, result.graph)
    return path
