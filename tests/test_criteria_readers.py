"""The per-member readers every criterion uses: flatten blocks, absent channels, activations per channel."""

from __future__ import annotations

import numpy as np

from deploysparse.criteria.base import channel_activations, channel_slices
from deploysparse.graph.groups import Member


def test_channel_slices_take_flatten_blocks_and_zero_absent_channels():
    weight = np.arange(2 * 12, dtype=float).reshape(2, 12)  # Gemm (out, features): 3 channels x 4
    member = Member("consumer", "w", 1, np.array([0, 8, -1]), width=4)
    rows = channel_slices(weight, member)
    assert rows.shape == (3, 8)
    assert sorted(rows[0].tolist()) == [0, 1, 2, 3, 12, 13, 14, 15]
    assert sorted(rows[1].tolist()) == [8, 9, 10, 11, 20, 21, 22, 23]
    assert not rows[2].any()


def test_channel_activations_per_group_channel():
    values = np.arange(2 * 4 * 3, dtype=float).reshape(2, 4, 3)  # (N, C, positions)
    member = Member("consumer", "w", 1, np.array([2, 0]))
    per_channel = channel_activations(values.reshape(2, 4, 3, 1), member, 1)
    assert per_channel.shape == (2, 2, 3)
    assert np.array_equal(per_channel[:, 0], values[:, 2]) and np.array_equal(per_channel[:, 1], values[:, 0])
