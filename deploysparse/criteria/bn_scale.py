"""Network slimming (Liu et al. 2017): a channel's BatchNorm scale |gamma| is its output's spread.

BN normalises every pre-activation to unit variance, so |gamma| is directly the channel's output
standard deviation and is comparable across layers: the raw values are ranked globally, as in the
paper (no per-group normalisation). A channel that flows through several BN nodes (a residual
stream) takes the largest |gamma|.

ONNX exports usually fold BN into the conv (torch's exporters do by default), and then no gamma is
left to read. We refuse rather than substitute a proxy under this name: a folded filter's norm is
|gamma|/sqrt(var+eps) times the raw filter norm, which is what the `l2` criterion already measures.
Groups without a BN node (e.g. a last conv with no BN) get no score and are left whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deploysparse.criteria.base import CriterionContext, channel_slices, weight_of
from deploysparse.errors import PlanError
from deploysparse.graph.groups import ChannelGroup
from deploysparse.graph.queries import group_producers


def bn_gammas(group: ChannelGroup, ga: object) -> np.ndarray | None:
    """Largest |gamma| over the group's BatchNormalization nodes, or None if it has none."""
    gammas = [
        np.abs(channel_slices(weight_of(ga, norm.scale), norm.scale)[:, 0])
        for norm in group_producers(ga, group).norms
    ]
    if not gammas:
        return None
    return np.max(np.stack(gammas), axis=0)


@dataclass(frozen=True)
class BNScaleCriterion:
    name: str = "bn-scale"
    needs_data: bool = False

    def score(self, group: ChannelGroup, ctx: CriterionContext) -> np.ndarray | None:
        """|gamma| per channel; None for a group without BN (it is then not pruned)."""
        return bn_gammas(group, ctx.ga)

    def check_model(self, groups: list[ChannelGroup], ga: object) -> None:
        """Refuse a model in which no prunable group has a BatchNormalization node."""
        if not any(bn_gammas(g, ga) is not None for g in groups if g.prunable):
            raise PlanError(
                "criterion bn-scale needs BatchNormalization nodes, and this model has none (BN was "
                "folded into the convs at export): export with BN kept (torch.onnx.export(..., "
                "optimize=False) or do_constant_folding=False), or use --criterion l2"
            )


BN_SCALE = BNScaleCriterion()
