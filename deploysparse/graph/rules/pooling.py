"""Pools and reductions: each channel's positions summarised, channels kept where they are. A
ReduceMean over the channel axis alone (the mean and variance of an exported LayerNorm) is a
statistic over the channels, written in the masked original as a mean over the kept ones."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

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


def _reduced_axes(node: onnx.NodeProto, t: ChannelTable) -> set[int] | None:
    """The axes a Reduce* node reduces (attribute, or constant input from opset 13/18), None when unknown."""
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = constant(t, node.input[1])
    if axes is None:
        return None
    rank = len(t.shapes.get(node.input[0], ()))
    return {norm_axis(int(a), rank) for a in np.asarray(axes).reshape(-1)}


def _reduce_axis(node: onnx.NodeProto, t: ChannelTable) -> int | None:
    """The channels stay on their axis, moved left by the reduced axes before it unless kept; a mean
    over the channel axis itself leaves a single value there (kept dims) or no channel axis."""
    channel_axis = t.channel_axis(node.input[0])
    axes = _reduced_axes(node, t)
    if channel_axis is None or axes is None:
        return 1
    keepdims = bool(attr(node, "keepdims", 1))
    if channel_axis in axes:
        return channel_axis if keepdims else None
    return channel_axis if keepdims else channel_axis - sum(a < channel_axis for a in axes)


@rule(
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceSum",
    "ReduceL2",
    "ReduceL1",
    zero_to_zero=True,
    channel_axis=_reduce_axis,
    masked=lambda node, kept, t: _masked_mean(node, kept, t),
)
def _reduce(node: onnx.NodeProto, t: ChannelTable) -> None:
    """Positions summarised, channels kept where they are. A mean over the channel axis alone (an
    exported LayerNorm's mean and variance) is a statistic over the channels: pruning may change it."""
    src, dst = node.input[0], node.output[0]
    axes = _reduced_axes(node, t)
    channel_axis = t.channel_axis(src)
    if axes is None or channel_axis is None:
        pin_all(node, t, "reduction over unknown axes")
        return
    if node.op_type == "ReduceMean" and axes == {channel_axis}:
        t.statistic(src, node)
        return
    if axes & {0, channel_axis} or t.channels(dst) is None:
        pin_all(node, t, "reduction over the channel axis")
        return
    t.flow(src, dst)


def _masked_mean(
    node: onnx.NodeProto, kept: np.ndarray, t: ChannelTable
) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """The mean over the kept channels: the input weighted by kept * C / k, then the same ReduceMean."""
    x = node.input[0]
    trailing = len(t.shapes[x]) - 1 - t.channel_axis(x)
    name = f"{node.name}_masked"
    weights = (kept * (len(kept) / kept.sum())).reshape(-1, *([1] * trailing))
    masked = onnx.NodeProto()
    masked.CopyFrom(node)
    masked.input[0] = f"{name}_input"
    weigh = helper.make_node("Mul", [x, f"{name}_weights"], [f"{name}_input"], name=f"{name}_weigh")
    return [weigh, masked], {f"{name}_weights": weights.astype(np.float32)}
