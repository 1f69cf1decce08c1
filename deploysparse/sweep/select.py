"""Choosing among points: the selection rule's score, the chosen point, and the Pareto fronts.

Ties are broken by FLOPs, then size, then key, never by latency: latency is noisy, and the same
sweep run in-process and on Ray must choose the same point whenever accuracy and cost agree.
"""

from __future__ import annotations

from typing import Any

from deploysparse.sweep.config import Select

INFEASIBLE = -1e6  # scores of points that break a limit lie below this, ordered by how far they miss


def violations(row: dict[str, Any], rule: Select) -> list[str]:
    """Why a point does not qualify (empty when it does)."""
    if row.get("status") != "ok":
        return ["failed"]
    why = []
    if rule.require_passed and not row.get("passed"):
        why.append("validation failed")
    if rule.max_p50_ms is not None and row["p50_ms"] > rule.max_p50_ms:
        why.append(f"p50 {row['p50_ms']:.3f} ms > {rule.max_p50_ms} ms")
    drop = row.get("accuracy_drop")
    if rule.max_accuracy_drop is not None and (drop is None or drop > rule.max_accuracy_drop + 1e-12):
        why.append(
            "no accuracy measured" if drop is None else f"accuracy drop {drop:.4f} > {rule.max_accuracy_drop}"
        )
    if rule.max_size_bytes is not None and row["size_bytes"] > rule.max_size_bytes:
        why.append(f"size {row['size_bytes']} B > {rule.max_size_bytes} B")
    return why


def goal_value(row: dict[str, Any], rule: Select) -> float:
    """The goal as a number to maximise."""
    if rule.goal == "max_accuracy":
        return float(row.get("accuracy") or 0.0)
    if rule.goal == "min_latency":
        return -float(row["p50_ms"])
    if rule.goal == "min_size":
        return -float(row["size_bytes"])
    return -float(row["flops_ratio"])


def score(row: dict[str, Any], rule: Select) -> float:
    """What a Tune search algorithm maximises: the goal for a qualifying point, else a penalty that
    shrinks as the point comes closer to the limits (so a search can climb towards them)."""
    if row.get("status") != "ok":
        return 2 * INFEASIBLE
    if not violations(row, rule):
        return goal_value(row, rule)
    miss = 0.0
    drop = row.get("accuracy_drop")
    if rule.max_accuracy_drop is not None and drop is not None:
        miss += max(0.0, drop - rule.max_accuracy_drop)
    if rule.max_p50_ms is not None:
        miss += max(0.0, row["p50_ms"] / rule.max_p50_ms - 1)
    if rule.max_size_bytes is not None:
        miss += max(0.0, row["size_bytes"] / rule.max_size_bytes - 1)
    if rule.require_passed and not row.get("passed"):
        miss += 1.0
    return INFEASIBLE - miss


def choose(rows: list[dict[str, Any]], rule: Select) -> dict[str, Any] | None:
    """The best qualifying point, or None when no point meets the rule."""
    qualifying = [r for r in rows if not violations(r, rule)]
    if not qualifying:
        return None
    return min(qualifying, key=lambda r: (-goal_value(r, rule), r["flops_ratio"], r["size_bytes"], r["key"]))


def pareto_front(rows: list[dict[str, Any]], cost: str) -> list[dict[str, Any]]:
    """Points no other point beats on both accuracy (higher) and `cost` (lower), sorted by cost."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("accuracy") is not None]
    front = [
        r
        for r in ok
        if not any(
            o["accuracy"] >= r["accuracy"]
            and o[cost] <= r[cost]
            and (o["accuracy"] > r["accuracy"] or o[cost] < r[cost])
            for o in ok
        )
    ]
    return sorted(front, key=lambda r: (r[cost], -r["accuracy"]))
