"""l1 / l2: filter norms summed over a group's producers, mean-normalised; budgets met on real graphs."""

from __future__ import annotations

import numpy as np
import pytest

from deploysparse.criteria import get_criterion
from deploysparse.errors import UsageError
from tests.criteria_helpers import chain_model, check_budgets, context, flatten_model, residual_model


def test_l1_and_l2_hand_computed_on_one_producer():
    model = chain_model(np.random.default_rng(0))
    ga, ctx = context(model)
    weight = ga.weights["conv1.weight"].reshape(8, -1).astype(np.float64)
    for name, norms in (("l1", np.abs(weight).sum(axis=1)), ("l2", np.sqrt((weight**2).sum(axis=1)))):
        got = get_criterion(name).score(ga.group("g1"), ctx)
        assert np.allclose(got, norms / norms.mean())
        assert got.mean() == pytest.approx(1.0)


def test_residual_stream_sums_over_its_producers():
    model = residual_model(np.random.default_rng(1))
    ga, ctx = context(model)
    stream = next(g for g in ga.groups if len(g.producers) == 3)
    norms = sum(
        np.linalg.norm(ga.weights[m.name].reshape(16, -1).astype(np.float64), axis=1)
        for m in stream.producers
    )
    assert np.allclose(get_criterion("l2").score(stream, ctx), norms / norms.mean())


@pytest.mark.parametrize("name", ["l1", "l2"])
@pytest.mark.parametrize("make", [chain_model, flatten_model, residual_model])
def test_budgets_met_and_pruned_model_runs(name, make):
    check_budgets(name, make(np.random.default_rng(2)), None)


def test_unknown_criterion_names_the_known_ones():
    with pytest.raises(UsageError, match="l2"):
        get_criterion("l3")
