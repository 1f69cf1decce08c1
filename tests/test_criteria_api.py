"""Every criterion through the public API (api.prune): budgets, dead filters first, finite outputs."""

from __future__ import annotations

import numpy as np
import pytest

from deploysparse import api
from deploysparse.criteria import CRITERIA
from tests.criteria_helpers import Builder, residual_model, run, w


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_prune_through_the_api(criterion):
    rng = np.random.default_rng(0)
    model = residual_model(rng)
    calib = {"x": rng.normal(size=(8, 3, 8, 8)).astype(np.float32)}
    round_to = 1 if criterion == "pfp-random" else 2  # sampling cannot honour rounding (UsageError)
    result = api.prune(model, criterion=criterion, calib=calib, ratio=0.3, round_to=round_to)
    assert result.summary["channels_removed"] > 0
    assert result.summary["flops_after"] < result.summary["flops_before"]
    for group in result.summary["groups"]:
        assert group["kept"] % round_to == 0 or group["kept"] == group["channels"]
    fresh = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    assert np.all(np.isfinite(run(result.model, fresh)))


def test_dead_filters_go_first_and_free():
    rng = np.random.default_rng(1)
    b = Builder(rng)
    gamma = 0.5 + rng.random(10)
    beta = rng.normal(size=10) * 0.1
    gamma[[3, 7]], beta[[3, 7]] = 0.0, -0.5  # BN scale 0, shift < 0: relu output is constant zero
    h = b.op("Relu", b.bn(b.conv("x", w(rng, 10, 3, 3, 3)), gamma, beta))
    h = b.op("Relu", b.bn(b.conv(h, w(rng, 12, 10, 3, 3)), 0.5 + rng.random(12)))
    model = b.model(b.op("GlobalAveragePool", h))
    result = api.prune(model, criterion="l2", ratio=0.2, round_to=1)
    kept_g1 = next(g for g in result.summary["groups"] if g["channels"] == 10)["kept"]
    assert result.summary["dead_removed"] == 2
    assert result.summary["channels_removed"] == 2 + round(0.2 * 8)  # the 12 are pinned (output)
    assert kept_g1 == 6
