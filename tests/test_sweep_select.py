"""Choosing among points: the rule's limits, its tie-breaks (never latency), the search score, the
Pareto front."""

from __future__ import annotations

from deploysparse.sweep.config import Select
from deploysparse.sweep.select import INFEASIBLE, choose, pareto_front, score, violations


def point(key: str, accuracy: float, p50: float, flops: float, size: int = 1000, **extra) -> dict:
    return {
        "key": key,
        "status": "ok",
        "accuracy": accuracy,
        "accuracy_drop": 0.99 - accuracy,
        "passed": True,
        "p50_ms": p50,
        "flops_ratio": flops,
        "size_bytes": size,
        **extra,
    }


def test_pareto_front_drops_dominated_points() -> None:
    rows = [
        {"key": "a", "status": "ok", "accuracy": 0.99, "p50_ms": 2.0},
        {"key": "b", "status": "ok", "accuracy": 0.98, "p50_ms": 1.0},
        {"key": "c", "status": "ok", "accuracy": 0.97, "p50_ms": 1.5},  # worse than b on both
        {"key": "d", "status": "failed"},
    ]
    assert [r["key"] for r in pareto_front(rows, "p50_ms")] == ["b", "a"]


def test_highest_accuracy_under_a_latency_limit() -> None:
    rows = [point("a", 0.99, 2.0, 0.5), point("b", 0.98, 1.0, 0.3), point("c", 0.97, 0.5, 0.2)]
    assert choose(rows, Select(goal="max_accuracy", max_p50_ms=1.5))["key"] == "b"
    assert violations(rows[0], Select(max_p50_ms=1.5)) == ["p50 2.000 ms > 1.5 ms"]


def test_smallest_model_within_an_accuracy_drop() -> None:
    rows = [
        point("a", 0.99, 2.0, 0.5, 900),
        point("b", 0.986, 1.0, 0.3, 500),
        point("c", 0.97, 0.5, 0.2, 300),
    ]
    assert choose(rows, Select(goal="min_size", max_accuracy_drop=0.005))["key"] == "b"


def test_ties_are_broken_by_flops_then_size_never_latency() -> None:
    rows = [point("a", 0.99, 0.1, 0.5), point("b", 0.99, 9.0, 0.3), point("c", 0.99, 0.2, 0.3, size=10)]
    assert choose(rows, Select(goal="max_accuracy"))["key"] == "c"


def test_failed_and_unvalidated_points_never_qualify() -> None:
    rows = [{"key": "f", "status": "failed"}, point("u", 0.99, 1.0, 0.5, passed=False)]
    assert choose(rows, Select()) is None
    assert choose(rows, Select(require_passed=False))["key"] == "u"


def test_search_score_ranks_infeasible_points_by_how_far_they_miss() -> None:
    rule = Select(goal="min_flops", max_accuracy_drop=0.01)
    ok, near, far = point("ok", 0.985, 1, 0.3), point("near", 0.975, 1, 0.2), point("far", 0.9, 1, 0.1)
    assert score(ok, rule) == -0.3
    assert INFEASIBLE > score(near, rule) > score(far, rule) > score({"status": "failed"}, rule)
