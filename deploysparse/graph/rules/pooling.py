"""Pools and reductions: each channel's positions summarised, channels kept where they are."""

from __future__ import annotations

import numpy as np
import onnx

from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.rules.helpers import (
    attr,
    constant,
    has_padding,
    norm_axis,
    padded_constant,
    pin_all,
    same_channels,
    unary,
)
from deploysparse.graph.rules.registry import register_rule, rule

for _op in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxPool"):
    register_rule(_op, unary, zero_to_zero=True)


@rule("AveragePool", zero_to_zero=True)
def _average_pool(node: onnx.NodeProto, t: ChannelTable) -> None:
    # Zero padding averaged in makes a non-zero constant's border differ; a 0 stays 0.
    zero_padded = has_padding(node) and attr(node, "count_include_pad", 0)
    if same_channels(
        node, t, "channel count changes or is unknown", constant_if="all" if not zero_padded else "zero"
    ):
        padded_constant(node, t, zero_padded)


@rule("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1", zero_to_zero=True)
def _reduce(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    rank = len(t.shapes.get(src, ()))
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = constant(t, node.input[1])
    if axes is None or t.channels(src) is None or t.channels(dst) is None:
        pin_all(node, t, "reduction over unknown axes")
        return
    axes = {norm_axis(int(a), rank) for a in np.asarray(axes).reshape(-1)}
    if axes & {0, 1}:
        pin_all(node, t, "reduction over the channel axis")
        return
    t.flow(src, dst)
