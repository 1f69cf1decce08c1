"""Elementwise ops between activations and constants (Add, Mul, ..., PRelu): two activations' channels
are coupled (residual sums, SE gates); a constant with a per-channel axis is sliced with them, on
whichever axis the channels lie (a bias or layer scale on the last axis of an NHWC tensor)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.rules.helpers import constant, input_axis, pin_all
from deploysparse.graph.rules.registry import register_rule, rule


@rule("PRelu", zero_to_zero=True, channel_axis=input_axis)
def _prelu(node: onnx.NodeProto, t: ChannelTable) -> None:
    _elementwise(node, t)


def _elementwise(node: onnx.NodeProto, t: ChannelTable) -> None:
    """Two activations: their channels are coupled (residual sums, SE gates). A constant with a
    per-channel axis (a bias, a layer scale, a PReLU slope) is sliced with them; a broadcast one is
    left alone. The channels may lie on any axis (a bias added on the last axis after an NHWC
    transpose); every operand with channels must keep them on the output's channel axis."""
    dst = node.output[0]
    out_c = t.channels(dst)
    out_axis = t.channel_axis(dst)
    out_rank = len(t.shapes.get(dst, ()))
    if out_c is None:
        pin_all(node, t, "no static channel axis")
        return
    live = []
    for i, name in enumerate(node.input):
        value = constant(t, name)
        if value is not None:
            axis = out_axis - (out_rank - value.ndim)  # broadcasting aligns trailing axes
            if 0 <= axis < value.ndim and value.shape[axis] == out_c and out_c > 1:
                t.attach("param", node, i, axis, dst)
            continue
        shape = t.shapes.get(name)
        if shape is None or len(shape) != out_rank:
            pin_all(node, t, "operand of another rank")
            return
        axis = t.channel_axis(name)
        if shape[out_axis] == out_c and axis == out_axis:
            live.append(name)
        elif axis is not None and axis != out_axis and (t.channels(name) or 1) > 1:
            # An operand of the same rank whose channels lie elsewhere is no broadcast: tokens made a
            # map again by a pinned Reshape and a Transpose, added to a conv branch (SVTR).
            pin_all(node, t, "operands keep their channels on different axes")
            return
        elif shape[out_axis] == 1:
            t.not_constant(dst)  # a broadcast gate varies along positions the channel does not see
        elif shape[out_axis] == out_c:
            pin_all(node, t, "operands keep their channels on different axes")
            return
        else:
            pin_all(node, t, "channel counts do not broadcast")
            return
    if not live:
        pin_all(node, t, "no activation operand with channels")
        return
    for name in live:
        t.flow(name, dst, constant_if="any" if node.op_type == "Mul" else "all")


def _no_constant_operand(node: onnx.NodeProto, t: ChannelTable) -> bool:
    """0 + 0 is 0; 0 + a constant is not (a sum keeps zero only when every operand is an activation)."""
    return not any(constant(t, name) is not None for name in node.input)


def _product(node: onnx.NodeProto, constants: Mapping[str, np.ndarray]):
    """x * gate(x) (SiLU) from one layer's output; a constant operand is not read here."""
    if len(node.input) != 2 or any(name in constants for name in node.input):
        return None
    return lambda xs, F: xs[0] * xs[1]


register_rule(
    "Add",
    _elementwise,
    zeroes=(0, 1),
    zero_to_zero=_no_constant_operand,
    merges_residual=True,
    channel_axis=input_axis,
)
register_rule("Sub", _elementwise, zeroes=(0, 1), zero_to_zero=_no_constant_operand, channel_axis=input_axis)
register_rule(
    ("Sum", "Mean", "Max", "Min"), _elementwise, zero_to_zero=_no_constant_operand, channel_axis=input_axis
)
# A per-channel multiplier (a layer scale) zeroed gives 0 whatever the channel's value before it.
register_rule(
    "Mul", _elementwise, zeroes=(0, 1), zero_to_zero=True, compute=_product, channel_axis=input_axis
)
register_rule("Div", _elementwise, zero_to_zero=True, channel_axis=input_axis)
register_rule("Pow", _elementwise, channel_axis=input_axis)
