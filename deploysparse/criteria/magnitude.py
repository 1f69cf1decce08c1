"""Filter-norm criteria (Li et al. 2017): a channel whose filter weights are small contributes little.

A group can have several producers (a residual stream is written by every block's last conv): a
channel's importance is the sum over producers of the norm of its filter in each, then divided by
the group's mean so that a global ranking compares each channel with its own group's average
(see `normalise_by_mean`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deploysparse.criteria.base import CriterionContext, channel_slices, normalise_by_mean, weight_of
from deploysparse.graph.groups import ChannelGroup


def filter_norms(filters: list[np.ndarray], order: int) -> np.ndarray:
    """Sum over producers of each channel's filter norm; each array is (channels, fan-in)."""
    total = np.zeros(filters[0].shape[0], dtype=np.float64)
    for rows in filters:
        total += np.linalg.norm(rows, ord=order, axis=1)
    return total


@dataclass(frozen=True)
class NormCriterion:
    """l1 (order 1) or l2 (order 2) filter norm over the group's producers, mean-normalised."""

    name: str
    order: int
    needs_data: bool = False

    def score(self, group: ChannelGroup, ctx: CriterionContext) -> np.ndarray:
        filters = [channel_slices(weight_of(ctx.ga, m), m) for m in group.producers]
        if not filters:
            return np.ones(group.size)
        return normalise_by_mean(filter_norms(filters, self.order))


L1 = NormCriterion("l1", 1)
L2 = NormCriterion("l2", 2)
