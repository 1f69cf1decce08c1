"""pipeline.time_box: a run's speed measurement planned within bench.max_seconds from the cost of
one call (the costs are given here, so the plan is checked exactly, with no timing)."""

from __future__ import annotations

import numpy as np
import pytest

from deploysparse.backends.timing import timed_runs
from deploysparse.pipeline.time_box import MIN_ITERS, plan_time
from deploysparse.recipe import BenchSettings


class Costs:
    """What one call costs per batch: `true` (measured when asked), estimated in proportion to the
    batch from the smallest one, as CallCost does."""

    def __init__(self, true: dict[int, float]) -> None:
        self.true = true
        smallest = min(true)
        self.measured = {smallest: true[smallest]}
        self.per_sample = true[smallest] / smallest

    def known(self, batch: int) -> float:
        return self.measured.get(batch, self.per_sample * batch)

    def __call__(self, batch: int) -> float:
        self.measured[batch] = self.true[batch]
        return self.true[batch]


RECIPE = BenchSettings(batches=[1, 8], warmup=10, iters=50, repeats=5, max_seconds=60)


def test_a_fast_model_runs_the_recipes_counts() -> None:
    plan = plan_time(RECIPE, Costs({1: 1e-3, 8: 8e-3}), [1, 8], models=3, profile=True)
    assert plan.batches == [1, 8] and plan.skipped == []
    assert plan.box_s == pytest.approx(45 / (5 * 3 * 2))  # three quarters of 60 s, shared out
    assert plan.profile_runs == 50 and plan.profile_warmup == 10  # the recipe's counts fit: as asked


def test_a_heavy_model_loses_the_batch_that_cannot_fit_and_says_why() -> None:
    """PP-OCRv4's detector at 320x320 on a loaded 2-core machine: 0.6 s a call at batch 1."""
    costs = Costs({1: 0.6, 8: 4.0})
    plan = plan_time(RECIPE, costs, [1, 8], models=3, profile=True)
    assert plan.batches == [1]
    assert costs.measured == {1: 0.6, 8: 4.0}  # the estimate (4.8 s) would drop batch 8: one call decided
    (skipped,) = plan.skipped
    assert skipped.batch == 8 and skipped.reason.startswith("one call at batch 8 takes 4 s here")
    assert plan.box_s == pytest.approx(45 / (5 * 3))
    assert plan.profile_runs == 8 and plan.profile_warmup == 1  # 15 s / (3 models x 0.6 s)


def test_a_batch_the_estimate_drops_but_one_call_saves_is_kept() -> None:
    """A GPU: batch 8 costs barely more than batch 1, far below the linear estimate."""
    costs = Costs({1: 0.05, 8: 0.06})
    plan = plan_time(RECIPE, costs, [1, 8], models=3, profile=False)
    assert plan.batches == [1, 8] and plan.skipped == [] and costs.measured[8] == 0.06
    assert plan.box_s == pytest.approx(60 / (5 * 3 * 2))  # no profile: all the time to the benchmark


def test_the_smallest_batch_is_always_measured() -> None:
    plan = plan_time(RECIPE, Costs({1: 30.0, 8: 240.0}), [1, 8], models=2, profile=True)
    assert plan.batches == [1] and plan.profile_runs == MIN_ITERS


def test_a_time_boxed_run_stops_after_its_box_with_at_least_min_iters() -> None:
    calls = []
    seconds = timed_runs(lambda: calls.append(1), iters=10**6, warmup=10**6, max_seconds=0.05, min_iters=3)
    assert 3 <= len(seconds) < 10**6 and len(calls) < 2 * 10**6
    assert np.all(seconds >= 0)
    # a box no call can meet still times min_iters calls
    slow = timed_runs(lambda: calls.append(1), iters=10, warmup=5, max_seconds=0.0, min_iters=4)
    assert len(slow) == 4
