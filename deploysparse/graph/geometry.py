"""The geometry of a conv consumer (strides, pads, dilations), for criteria that redo its patches.

PFP recomputes a conv's patches to split each output into its inputs' shares; which attributes a
conv carries is op knowledge, so it is read here, in the graph layer, and no criterion names an op
type or an attribute. Which consumers read a group, and on which tensor: graph/queries.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from deploysparse.graph.groups import Member
from deploysparse.graph.rules import attr


@dataclass(frozen=True)
class ConvGeometry:
    """Strides, pads (begin h, begin w, end h, end w), dilations and auto_pad of a 2-D conv."""

    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    auto_pad: str = "NOTSET"

    def pads_for(self, spatial: tuple[int, int], kernel: tuple[int, int]) -> tuple[int, ...]:
        """Explicit pads for an input of this spatial size (auto_pad SAME_* resolved as ONNX does)."""
        if self.auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
            return self.pads
        begin, end = [], []
        for size, k, stride, d in zip(spatial, kernel, self.strides, self.dilations, strict=True):
            total = max((math.ceil(size / stride) - 1) * stride + (k - 1) * d + 1 - size, 0)
            first = total // 2 if self.auto_pad == "SAME_UPPER" else total - total // 2
            begin.append(first)
            end.append(total - first)
        return (*begin, *end)


def conv_geometry(ga: Any, member: Member) -> ConvGeometry:
    """The strides, pads, dilations and auto_pad of the conv a consumer member belongs to."""
    node = ga.node(member.node)
    auto_pad = attr(node, "auto_pad", "NOTSET")
    return ConvGeometry(
        strides=tuple(attr(node, "strides", [1, 1])),
        pads=tuple(attr(node, "pads", [0, 0, 0, 0])),
        dilations=tuple(attr(node, "dilations", [1, 1])),
        auto_pad=auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad,
    )
