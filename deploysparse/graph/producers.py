"""What the criteria ask the graph about a group: the normalisation scales that scale its channels,
and how each consumer reads them (a 2-D conv or a dense layer, on which tensor, along which axis).

Criteria score channels; which ONNX op does what is the graph layer's knowledge, so it sits here and
no criterion names an op type. A new op that carries weights is described here (and in its rule),
never in a criterion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from deploysparse.graph.groups import ChannelGroup, Member
from deploysparse.graph.rules import attr

# op type -> input index of each per-channel parameter of a normalisation layer
NORMALIZATION_INPUTS: dict[str, dict[str, int]] = {
    "BatchNormalization": {"scale": 1, "bias": 2, "mean": 3, "var": 4},
}


def normalization_params(group: ChannelGroup) -> list[dict[str, Member]]:
    """Per normalisation node of the group (sorted by node name): its per-channel parameter members
    by role ("scale", "bias", "mean", "var"). Empty when the group has no normalisation layer (BN
    folded into the conv at export, or a last conv without BN)."""
    by_node: dict[str, dict[str, Member]] = {}
    for member in group.params:
        inputs = NORMALIZATION_INPUTS.get(member.op)
        if inputs is None:
            continue
        for role, index in inputs.items():
            if member.input_index == index:
                by_node.setdefault(member.node, {})[role] = member
    return [by_node[node] for node in sorted(by_node)]


@dataclass(frozen=True)
class LinearRead:
    """A consumer that computes a linear map of the group's channels from a batch-first tensor.

    tensor: the data input. axis: where the features sit (1 for (N, C, ...) and (N, F); -1 for a
    MatMul's last axis, whose leading dims all count as points). conv: a 2-D conv's geometry, None
    for a dense layer.
    """

    tensor: str
    axis: int
    conv: ConvGeometry | None = None


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


def linear_read(ga: Any, member: Member) -> LinearRead | None:
    """How a consumer member reads its group's channels, or None when it has no batch-first data view
    (a grouped conv, a transposed Gemm input, a weight fed as the first operand: W @ x)."""
    node = ga.node(member.node)
    if member.input_index != 1 or len(node.input) < 2:
        return None
    if node.op_type == "Conv":
        if attr(node, "group", 1) != 1:
            return None
        auto_pad = attr(node, "auto_pad", "NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        geometry = ConvGeometry(
            strides=tuple(attr(node, "strides", [1, 1])),
            pads=tuple(attr(node, "pads", [0, 0, 0, 0])),
            dilations=tuple(attr(node, "dilations", [1, 1])),
            auto_pad=auto_pad,
        )
        return LinearRead(node.input[0], 1, geometry)
    if node.op_type == "Gemm":
        return None if attr(node, "transA", 0) != 0 else LinearRead(node.input[0], 1)
    if node.op_type == "MatMul":
        return LinearRead(node.input[0], -1)
    return None
