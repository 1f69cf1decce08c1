"""The budget search: ratio and FLOPs targets met, constraints (round-to, min, protect, block, pinned) kept."""

from __future__ import annotations

import numpy as np
import pytest

from deploysparse.budget import Budget, allocate, legal_counts
from deploysparse.errors import PlanError, UsageError
from deploysparse.graph.groups import ChannelGroup, Member


def make_group(gid: str, size: int, *, pinned=(), block: int = 1) -> ChannelGroup:
    producer = Member(
        "producer", f"{gid}.w", 0, np.arange(size), node=f"conv_{gid}", op="Conv", input_index=1
    )
    return ChannelGroup(
        gid, size, [producer], pinned_channels=np.asarray(pinned, dtype=np.int64), block=block
    )


def chain_macs(groups: list[ChannelGroup], in_channels: int = 3, spatial: int = 64):
    """MACs of a chain of 3x3 convs, conv i reading group i-1's channels and writing group i's."""

    def macs_of(keep: dict[str, int]) -> int:
        total, previous = 0, in_channels
        for g in groups:
            kept = keep.get(g.id, g.size)
            total += previous * kept * 9 * spatial
            previous = kept
        return total

    return macs_of


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_ratio_removes_the_globally_lowest_scores(rng):
    groups = [make_group(f"g{i}", 10) for i in range(3)]
    scores = {g.id: rng.random(10) for g in groups}
    alloc = allocate(groups, scores, Budget(ratio=0.3, round_to=1))
    removed = {(g.id, c) for g in groups for c in range(10) if c not in alloc.keep.get(g.id, np.arange(10))}
    assert len(removed) == 9
    ranked = sorted((scores[g.id][c], g.id, c) for g in groups for c in range(10))[:9]
    assert removed == {(gid, c) for _, gid, c in ranked}


def test_round_to_keeps_multiples_never_above_original(rng):
    groups = [make_group("g0", 30), make_group("g1", 13)]
    scores = {g.id: rng.random(g.size) for g in groups}
    alloc = allocate(groups, scores, Budget(ratio=0.4, round_to=8))
    for g in groups:
        kept = len(alloc.keep.get(g.id, np.arange(g.size)))
        assert kept <= g.size
        assert kept % 8 == 0 or kept == g.size


def test_legal_counts_respect_min_round_and_block():
    counts, met = legal_counts(
        16, 2, np.zeros(16, bool), np.zeros(16, bool), min_channels=3, max_layer_ratio=None, round_to=4
    )
    assert met and counts.tolist() == [4, 8, 12, 16]
    counts, met = legal_counts(
        6, 1, np.zeros(6, bool), np.zeros(6, bool), min_channels=5, max_layer_ratio=None, round_to=4
    )
    assert not met and counts.tolist() == [5, 6]


def test_min_channels_floor(rng):
    groups = [make_group("g0", 8), make_group("g1", 8)]
    scores = {"g0": rng.random(8) * 1e-3, "g1": 1.0 + rng.random(8)}
    alloc = allocate(groups, scores, Budget(ratio=0.5, min_channels=3, round_to=1))
    assert len(alloc.keep["g0"]) == 3
    removed = 16 - len(alloc.keep["g0"]) - len(alloc.keep.get("g1", np.arange(8)))
    assert removed == 8


def test_protect_by_id_and_by_producer_node(rng):
    groups = [make_group(f"g{i}", 6) for i in range(3)]
    scores = {g.id: rng.random(6) for g in groups}
    alloc = allocate(groups, scores, Budget(ratio=0.5, protect=["g0", "conv_g2"], round_to=1))
    assert set(alloc.keep) == {"g1"}
    with pytest.raises(UsageError, match="nosuch"):
        allocate(groups, scores, Budget(ratio=0.5, protect=["nosuch"], round_to=1))


def test_block_keeps_equal_counts_per_block(rng):
    group = make_group("g0", 12, block=3)
    scores = {"g0": rng.random(12)}
    alloc = allocate([group], scores, Budget(ratio=0.5, round_to=1))
    kept = alloc.keep["g0"]
    per_block = np.bincount(kept // 4, minlength=3)
    assert len(set(per_block.tolist())) == 1 and per_block[0] in (2, 3)


def test_pinned_channels_are_never_removed(rng):
    group = make_group("g0", 10, pinned=[0, 1, 2])
    scores = {"g0": np.r_[np.zeros(3), 1 + rng.random(7)]}
    alloc = allocate([group], scores, Budget(ratio=0.9, round_to=1))
    assert {0, 1, 2} <= set(alloc.keep["g0"].tolist())


def test_dead_removed_first_and_free(rng):
    groups = [make_group("g0", 10), make_group("g1", 10)]
    scores = {g.id: 1 + rng.random(10) for g in groups}
    dead = {"g0": np.array([3, 4, 5, 6])}
    alloc = allocate(groups, scores, Budget(ratio=0.25, round_to=1), dead=dead)
    kept0 = set(alloc.keep["g0"].tolist())
    assert not kept0 & {3, 4, 5, 6}
    live_removed = 20 - 4 - len(kept0) - len(alloc.keep.get("g1", np.arange(10)))
    assert live_removed == 4  # 25% of the 16 live channels


def test_dead_kept_only_to_honour_min_channels():
    group = make_group("g0", 4)
    alloc = allocate(
        [group],
        {"g0": np.array([0.1, 0.2, 0.3, 0.4])},
        Budget(min_channels=1, round_to=1),
        dead={"g0": np.arange(4)},
    )
    assert alloc.keep["g0"].tolist() == [3]


def test_flops_target_met_within_two_percent(rng):
    groups = [make_group(f"g{i}", s) for i, s in enumerate([16, 32, 32, 64])]
    scores = {g.id: rng.random(g.size) for g in groups}
    macs_of = chain_macs(groups)
    for target in (0.3, 0.5, 0.8):
        alloc = allocate(groups, scores, Budget(flops_target=target, round_to=1), macs_of=macs_of)
        counts = {g: len(k) for g, k in alloc.keep.items()}
        assert abs(macs_of(counts) / macs_of({}) - target) <= 0.02


def test_flops_target_out_of_reach_gives_the_closest_plan_and_says_so(rng):
    """Not an error: the plan that removes the most, and an outcome that is not met."""
    groups = [make_group("g0", 8), make_group("g1", 8)]
    scores = {g.id: rng.random(8) for g in groups}
    macs_of = chain_macs(groups)
    budget = Budget(flops_target=0.05, protect=["g1"], round_to=1, max_layer_ratio=1.0)
    alloc = allocate(groups, scores, budget, macs_of=macs_of)
    assert len(alloc.keep["g0"]) == 1  # g1 protected: g0 down to --min-channels is the most
    reached = macs_of({"g0": 1}) / macs_of({})
    assert alloc.outcome.target == "flops_target" and not alloc.outcome.met
    assert alloc.outcome.reached == pytest.approx(reached) and reached > 0.05 + 0.02


def test_max_layer_ratio_caps_one_group(rng):
    groups = [make_group("g0", 10), make_group("g1", 10)]
    scores = {"g0": rng.random(10) * 0.01, "g1": 1 + rng.random(10)}
    alloc = allocate(groups, scores, Budget(ratio=0.5, max_layer_ratio=0.3, round_to=1))
    assert len(alloc.keep["g0"]) == 7
    assert len(alloc.keep["g1"]) == 7


def test_contradicting_options_raise():
    group = make_group("g0", 4)
    with pytest.raises(UsageError):
        allocate(
            [group], {"g0": np.ones(4)}, Budget(ratio=0.5, flops_target=0.5, round_to=1), macs_of=lambda k: 1
        )
    with pytest.raises(UsageError):
        allocate([group], {"g0": np.ones(4)}, Budget(ratio=1.5, round_to=1))
    with pytest.raises(PlanError):
        allocate([group], {"g0": np.ones(3)}, Budget(ratio=0.5, round_to=1))


def test_round_to_16_is_the_default_and_spares_small_and_odd_groups():
    assert Budget().round_to == 16
    none = np.zeros(6, bool)
    # smaller than round_to: no kernel block fits either way, so it is not rounded
    counts, met = legal_counts(6, 1, none, none, min_channels=1, max_layer_ratio=None, round_to=8)
    assert met and counts.tolist() == [1, 2, 3, 4, 5, 6]
    # not a multiple by design (10 channels): the multiples, and the original count
    counts, met = legal_counts(
        10, 1, np.zeros(10, bool), np.zeros(10, bool), min_channels=1, max_layer_ratio=None, round_to=8
    )
    assert met and counts.tolist() == [8, 10]
    # two dead channels of 8: rounding keeps them (exact) rather than leave the multiple
    dead = np.zeros(8, bool)
    dead[:2] = True
    counts, met = legal_counts(
        8, 1, np.zeros(8, bool), dead, min_channels=1, max_layer_ratio=None, round_to=8
    )
    assert met and counts.tolist() == [8]


def test_budget_options_are_checked_once():
    with pytest.raises(UsageError, match="either ratio or flops_target, not both"):
        Budget(ratio=0.5, flops_target=0.5)
    with pytest.raises(UsageError, match="unknown budget option 'flops'"):
        Budget.of(flops=0.5)
    assert Budget.of(Budget(ratio=0.2), round_to=None, min_channels=2) == Budget(ratio=0.2, min_channels=2)


def test_rounding_that_leaves_a_grouped_conv_whole_says_so(rng):
    """24 channels in 3 grouped-conv blocks: every block keeps the same count, so a kept count is a
    multiple of 3, and of --round-to 8: only 24. The ranking wants the group cut (its scores are the
    lowest); the plan keeps it whole, cuts the other group instead, and says why."""
    groups = [make_group("g0", 24, block=3), make_group("g1", 32)]
    scores = {"g0": rng.random(24) * 0.01, "g1": 1 + rng.random(32)}
    alloc = allocate(groups, scores, Budget(ratio=0.3, round_to=8))
    assert "g0" not in alloc.keep and len(alloc.keep["g1"]) < 32
    [note] = [n for n in alloc.notes if n.startswith("--round-to 8 left 1 group whole")]
    assert "conv_g0 (24 channels, 3 grouped-conv blocks)" in note
