"""Similarity: W2 / correlation distances, clustering, and merges that are exact for identical copies."""

from __future__ import annotations

import numpy as np
import pytest

from deploysparse.budget import Budget
from deploysparse.criteria import plan_with
from deploysparse.criteria.similarity import (
    cluster,
    merge_residual_distance,
    nearest_neighbour_score,
    w2_distance,
)
from deploysparse.graph.surgery import rewrite_graph
from tests.criteria_helpers import Builder, check_budgets, context, run, w


def test_w2_between_gaussians_hand_computed():
    d = w2_distance(np.array([0.0, 3.0, 0.0]), np.array([1.0, 1.0, -5.0]))
    assert d[0, 1] == pytest.approx(3.0)  # means differ by 3
    assert d[0, 2] == pytest.approx(4.0)  # stds 1 and |-5| differ by 4
    assert d[1, 2] == pytest.approx(5.0)
    assert np.allclose(np.diag(d), 0)


def test_merge_residual_distance():
    x = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [3.0, -2.0, 1.0 / 3.0], [0.0, 0.0, 0.0], [0, 0, 0]])
    d = merge_residual_distance(x)
    assert d[0, 1] == pytest.approx(0.0, abs=1e-7)  # a scaled copy
    assert d[0, 2] == pytest.approx(1.0)  # orthogonal: nothing of it survives a merge
    assert d[3, 4] == 0.0 and d[0, 3] == 1.0


def test_average_linkage_finds_the_planted_clusters():
    points = np.array([0.0, 0.1, 0.2, 5.0, 5.1, 9.0])
    labels = cluster(np.abs(points[:, None] - points[None, :]), 3)
    assert len(set(labels[:3])) == 1 and len(set(labels[3:5])) == 1 and labels[5] not in labels[:5]
    score = nearest_neighbour_score(np.abs(points[:, None] - points[None, :]))
    assert np.argmax(score) == 5


def copies_model(rng: np.random.Generator, *, scale: float = 1.0):
    """conv-bn-relu whose channel 5 is channel 2 times `scale` (same filter, bias, BN mean and var;
    gamma and beta scaled, so relu(scale·y) = scale·relu(y)), then a conv and a pool."""
    b = Builder(rng)
    w1 = w(rng, 8, 3, 3, 3)
    w1[5] = w1[2]
    x = b.conv("x", w1)
    b.inits[-1].CopyFrom(_copy_row(b.inits[-1], 5, 2, 1.0))
    gamma, beta = 0.5 + rng.random(8), rng.normal(size=8)
    gamma[5], beta[5] = gamma[2] * scale, beta[2] * scale
    bn = b.bn(x, gamma, beta)
    for name in (f"{bn}.mean", f"{bn}.var"):
        init = next(i for i in b.inits if i.name == name)
        init.CopyFrom(_copy_row(init, 5, 2, 1.0))
    h = b.op("Relu", bn)
    h = b.op("Relu", b.conv(h, w(rng, 6, 8, 3, 3)))
    return b.model(b.op("GlobalAveragePool", h))


def _copy_row(init, dst: int, src: int, factor: float):
    from onnx import numpy_helper

    value = numpy_helper.to_array(init).copy()
    value[dst] = value[src] * factor
    return numpy_helper.from_array(value, init.name)


@pytest.mark.parametrize("with_data", [True, False])
def test_merging_an_exact_copy_leaves_outputs_unchanged(with_data):
    rng = np.random.default_rng(4)
    model = copies_model(rng)
    x = rng.normal(size=(16, 3, 8, 8)).astype(np.float32)
    ga, ctx = context(model, x if with_data else None)
    group = ga.group("g1")
    plan = plan_with("similarity", ga, ctx, Budget(ratio=1 / 8, protect=["g2"], round_to=1))
    kept = plan.kept("g1", group.size)
    assert len(kept) == 7 and (2 in kept) != (5 in kept)
    (src, dst, factor), *_ = plan.merges["g1"]
    assert {src, dst} == {2, 5} and factor == pytest.approx(1.0, abs=1e-6)
    fresh = np.random.default_rng(11).normal(size=(4, 3, 8, 8)).astype(np.float32)
    assert np.allclose(run(rewrite_graph(ga, plan).model, fresh), run(model, fresh), atol=1e-5)


def test_scaled_copy_merges_with_its_factor():
    rng = np.random.default_rng(5)
    model = copies_model(rng, scale=2.5)
    x = rng.normal(size=(16, 3, 8, 8)).astype(np.float32)
    ga, ctx = context(model, x)
    plan = plan_with("similarity", ga, ctx, Budget(ratio=1 / 8, protect=["g2"], round_to=1))
    (src, dst, factor), *_ = plan.merges["g1"]
    assert {src, dst} == {2, 5}
    assert factor == pytest.approx(2.5 if src == 5 else 0.4, rel=1e-4)
    fresh = np.random.default_rng(12).normal(size=(4, 3, 8, 8)).astype(np.float32)
    assert np.allclose(run(rewrite_graph(ga, plan).model, fresh), run(model, fresh), atol=1e-4)


@pytest.mark.parametrize("with_data", [True, False])
def test_budgets_met(with_data):
    from tests.criteria_helpers import residual_model

    rng = np.random.default_rng(6)
    x = rng.normal(size=(8, 3, 8, 8)).astype(np.float32) if with_data else None
    check_budgets("similarity", residual_model(rng), x)
