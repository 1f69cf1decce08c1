"""Inactive channels (Mehta et al. 2019, data view): a channel that is zero on every calibration input.

We read the tensors the group's consumers read (after the activation), not the producers' outputs:
a channel is inactive when every consumer sees exactly zero from it on every calibration point and
position. After a ReLU that is "never positive". We test |value| == 0 rather than value <= 0 so that
a channel read before any ReLU (negative values carry information) is never called inactive.

Removing an inactive channel is exact on the calibration data only: an unseen input may activate it.
The plan notes say so, with the number of points seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deploysparse.criteria.base import (
    CriterionContext,
    channel_activations,
    consumer_input,
    normalise_by_mean,
)
from deploysparse.graph.groups import ChannelGroup


def peak_activation(per_channel: list[np.ndarray]) -> np.ndarray:
    """Largest |value| per channel over every point, position and consumer input; arrays (N, C, F)."""
    return np.max(np.stack([np.abs(a).max(axis=(0, 2)) for a in per_channel]), axis=0)


def consumer_views(group: ChannelGroup, ctx: CriterionContext) -> list[np.ndarray]:
    """Each distinct consumer input of the group, as (N, group size, features per channel)."""
    views: dict[tuple[str, int, bytes, int], np.ndarray] = {}
    reads = [(m, consumer_input(ctx.ga, m)) for m in group.consumers]
    reads = [(m, r) for m, r in reads if r is not None]
    ctx.prefetch(name for _, (name, _) in reads)
    for member, (tensor, axis) in reads:
        key = (tensor, axis, np.asarray(member.index).tobytes(), member.width)
        if key not in views:
            views[key] = channel_activations(ctx.activations(tensor), member, axis)
    return list(views.values())


@dataclass(frozen=True)
class InactiveCriterion:
    """Scores are the channel's peak |activation| (mean-normalised); zero means inactive."""

    name: str = "inactive"
    needs_data: bool = True

    def score(self, group: ChannelGroup, ctx: CriterionContext) -> np.ndarray | None:
        views = consumer_views(group, ctx)
        if not views:
            return None
        return normalise_by_mean(peak_activation(views))

    def dead(self, group: ChannelGroup, ctx: CriterionContext) -> np.ndarray:
        """Channels that are exactly zero on every calibration input (lossless on that data only)."""
        views = consumer_views(group, ctx)
        if not views:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(peak_activation(views) == 0.0)


INACTIVE = InactiveCriterion()
