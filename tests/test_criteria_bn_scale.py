"""bn-scale: |gamma| ranked raw, max over a stream's BN nodes; a model without BN is refused."""

from __future__ import annotations

import numpy as np
import pytest

from deploysparse.budget import Budget
from deploysparse.criteria import get_criterion, plan_with
from deploysparse.errors import PlanError
from tests.criteria_helpers import chain_model, check_budgets, context, flatten_model, residual_model


def test_scores_are_abs_gamma_and_the_smallest_go_first():
    g1 = np.array([0.9, -0.01, 0.5, 0.7, 0.02, 0.8, 0.6, 0.4])
    model = chain_model(np.random.default_rng(0), gammas=(g1, 0.5 + np.arange(12) / 10))
    ga, ctx = context(model)
    assert np.allclose(get_criterion("bn-scale").score(ga.group("g1"), ctx), np.abs(g1), atol=1e-7)
    plan = plan_with(
        "bn-scale", ga, ctx, Budget(ratio=0.1, round_to=1)
    )  # 2 of 20 channels: the two tiny gammas
    assert plan.kept("g1", 8).tolist() == [0, 2, 3, 5, 6, 7] and "g2" not in plan.keep


def test_residual_stream_takes_the_largest_gamma():
    model = residual_model(np.random.default_rng(1))
    ga, ctx = context(model)
    stream = next(g for g in ga.groups if len(g.producers) == 3)
    gammas = [
        ga.weights[m.name] for m in stream.params if m.op == "BatchNormalization" and m.input_index == 1
    ]
    assert len(gammas) == 3
    assert np.allclose(get_criterion("bn-scale").score(stream, ctx), np.max(np.abs(gammas), axis=0))


def test_budgets_met():
    check_budgets("bn-scale", residual_model(np.random.default_rng(2)), None)


def test_folded_model_is_refused_with_advice():
    ga, ctx = context(flatten_model(np.random.default_rng(3)))
    with pytest.raises(PlanError, match="optimize=False"):
        plan_with("bn-scale", ga, ctx, Budget(ratio=0.2, round_to=1))
