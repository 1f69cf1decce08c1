"""PFP: sensitivities, sample sizes and kept counts against hand-computed cases; the eps search."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deploysparse.budget import Budget, group_budgets
from deploysparse.criteria.pfp import (
    GroupSensitivity,
    _sample,
    conv_sensitivity,
    dense_sensitivity,
    expected_kept,
    layer_alpha,
    pfp_allocate,
    sample_size,
)
from deploysparse.graph.groups import ChannelGroup, Member


def test_dense_sensitivity_hand_computed():
    w = np.array([[1.0, 2.0, 1.0], [-1.0, -3.0, 2.0]])
    # point 1: z+ = (5, 4), z- = (0 -> ignored, -4): shares (1/5, 2/5, 2/5), (0, 0, 1), (1/4, 3/4, 0)
    assert np.allclose(dense_sensitivity(np.array([[1.0, 1.0, 2.0]]), w), [0.25, 0.75, 1.0])
    # point 2 adds z+ = (2, 0), z- = (0, -3): channel 1 reaches share 1
    both = np.array([[1.0, 1.0, 2.0], [0.0, 1.0, 0.0]])
    assert np.allclose(dense_sensitivity(both, w), [0.25, 1.0, 1.0])


def test_negative_inputs_count_as_two_points():
    w = np.array([[1.0, 1.0]])
    # a = (1, -3): points a+ = (1, 0) and -a- = (0, 3): each channel alone carries its z+
    assert np.allclose(dense_sensitivity(np.array([[1.0, -3.0]]), w), [1.0, 1.0])


def brute_force_conv(a, w, stride, pad):
    """The definition, loop by loop: max over points, filters, patches and kernel positions."""
    a = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = a.shape
    o, _, kh, kw = w.shape
    s = np.zeros(c)
    for part in (np.maximum(w, 0), np.minimum(w, 0)):
        for x in range(n):
            for i in range(o):
                for y0 in range(0, h - kh + 1, stride):
                    for x0 in range(0, wd - kw + 1, stride):
                        patch = a[x, :, y0 : y0 + kh, x0 : x0 + kw]
                        z = float((part[i] * patch).sum())
                        if abs(z) < np.finfo(np.float32).eps:
                            continue
                        s = np.maximum(s, (part[i] * patch / z).reshape(c, -1).max(axis=1))
    return s


@pytest.mark.parametrize(("stride", "pad"), [(1, 0), (2, 1)])
def test_conv_sensitivity_matches_definition(stride, pad):
    rng = np.random.default_rng(3)
    a = np.maximum(rng.normal(size=(3, 4, 6, 6)), 0)
    w = rng.normal(size=(5, 4, 3, 3))
    got = conv_sensitivity(a, w, strides=(stride, stride), pads=(pad,) * 4)
    assert np.allclose(got, brute_force_conv(a, w, stride, pad))
    assert np.all((got >= 0) & (got <= 1 + 1e-12))


def test_sample_size_alpha_and_kept_count_hand_computed():
    assert sample_size(1.0, 2.0) == 48  # ceil(3·8·2/1)
    assert sample_size(2.0, 1.0) == 8  # ceil(3·10/4) = ceil(7.5)
    assert layer_alpha(3, 9) == pytest.approx(6 * math.log(8 * 4 * 9 / 1e-16))
    p = np.array([0.25, 0.25, 0.5])
    assert expected_kept(p, 1) == 1
    assert expected_kept(p, 2) == 2  # 3 - (0.5625 + 0.5625 + 0.25) = 1.625
    assert expected_kept(p, 10) == 3  # 2·(1-0.75^10) + (1-0.5^10) = 2.886
    assert expected_kept(np.array([1.0, 0.0]), 1000) == 1


def make_group(gid: str, size: int) -> ChannelGroup:
    producer = Member(
        "producer", f"{gid}.w", 0, np.arange(size), node=f"conv_{gid}", op="Conv", input_index=1
    )
    return ChannelGroup(gid, size, [producer])


def synthetic(rng, sizes=(16, 32, 64)):
    groups = [make_group(f"g{i}", n) for i, n in enumerate(sizes)]
    sens = {g.id: GroupSensitivity(rng.random(g.size) ** 3, layer_alpha(64, 9), 1000) for g in groups}
    return groups, sens


def test_one_eps_meets_the_ratio():
    rng = np.random.default_rng(0)
    groups, sens = synthetic(rng)
    result = pfp_allocate(groups, sens, Budget(ratio=0.5, round_to=1), rng=rng)
    removed = sum(g.size - len(result.keep.get(g.id, range(g.size))) for g in groups)
    assert abs(removed - 56) <= 2
    for g in groups:  # deterministic: the kept channels are the top-u by sensitivity
        kept = result.keep.get(g.id, np.arange(g.size))
        u = len(kept)
        assert set(kept.tolist()) == set(np.argsort(-sens[g.id].s)[:u].tolist())
        mask = np.ones(g.size, bool)
        assert u == max(1, sens[g.id].kept(result.eps, mask))


def test_one_eps_meets_a_flops_target():
    rng = np.random.default_rng(1)
    groups, sens = synthetic(rng)

    def macs_of(keep):
        previous, total = 3, 0
        for g in groups:
            kept = keep.get(g.id, g.size)
            total += previous * kept * 9 * 256
            previous = kept
        return total

    result = pfp_allocate(groups, sens, Budget(flops_target=0.4, round_to=1), rng=rng, macs_of=macs_of)
    counts = {gid: len(k) for gid, k in result.keep.items()}
    assert abs(macs_of(counts) / macs_of({}) - 0.4) <= 0.02


def test_random_variant_reweighting_is_unbiased():
    group = make_group("g0", 5)
    s = np.array([0.1, 0.2, 0.3, 0.15, 0.25])
    sens = GroupSensitivity(s, 1.0, 10)
    (budget,) = group_budgets([group], {"g0": s}, Budget(round_to=1))
    rng = np.random.default_rng(5)
    eps = 3.0
    m = sample_size(eps, s.sum())
    scales = []
    for _ in range(4000):
        keep, scale = _sample(budget, sens, eps, rng)
        assert np.all(scale[np.setdiff1d(np.arange(5), keep)] == 0)
        assert np.allclose(scale * m * (s / s.sum()), np.round(scale * m * (s / s.sum())))  # count_j/(m p_j)
        scales.append(scale)
    assert np.allclose(np.mean(scales, axis=0), 1.0, atol=0.05)


def test_random_variant_plan_carries_scales():
    rng = np.random.default_rng(2)
    groups, sens = synthetic(rng, sizes=(32, 32))
    result = pfp_allocate(groups, sens, Budget(ratio=0.5, round_to=1), rng=rng, variant="random")
    assert result.scales
    for gid, scale in result.scales.items():
        kept = result.keep[gid]
        assert np.all(scale[kept] > 0)


def test_graph_sensitivities_match_the_definition_per_consumer():
    from deploysparse.criteria import get_criterion
    from tests.criteria_helpers import context, flatten_model, intermediate

    rng = np.random.default_rng(8)
    model = flatten_model(rng)
    x = rng.normal(size=(4, 3, 8, 8)).astype(np.float32)
    ga, ctx = context(model, x)
    s = get_criterion("pfp").score(ga.group("g1"), ctx)  # read by conv3 (stride 2, pad 1)
    a = intermediate(ga.model, {"x": x}, ["relu2"])["relu2"].astype(np.float64)
    assert np.allclose(s, brute_force_conv(a, ga.weights["conv3.weight"].astype(np.float64), 2, 1))
    s = get_criterion("pfp").score(ga.group("g2"), ctx)  # flattened into the Gemm: 16 features each
    a = intermediate(ga.model, {"x": x}, ["flatten5"])["flatten5"].astype(np.float64)
    per_feature = dense_sensitivity(a, ga.weights["fc6.weight"].astype(np.float64))
    assert np.allclose(s, per_feature.reshape(10, 16).max(axis=1))


@pytest.mark.parametrize("variant", ["pfp", "pfp-random"])
def test_pfp_plans_on_a_residual_graph(variant):
    from deploysparse.criteria import plan_with
    from deploysparse.graph.surgery import rewrite_graph
    from tests.criteria_helpers import check_budgets, context, residual_model, run

    rng = np.random.default_rng(9)
    model = residual_model(rng)
    x = rng.normal(size=(8, 3, 8, 8)).astype(np.float32)
    if variant == "pfp":
        check_budgets("pfp", model, x)
        return
    ga, ctx = context(model, x)
    plan = plan_with("pfp-random", ga, ctx, Budget(ratio=0.3, round_to=1))
    assert plan.scales and set(plan.scales) <= set(plan.keep)
    fresh = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    assert np.all(np.isfinite(run(rewrite_graph(ga, plan).model, fresh)))
