"""Ops that change positions, not channels: Resize and Upsample (a size constant to rewrite), Pad
(what its border does to a constant channel; the channels may lie on any axis it does not pad)."""

from __future__ import annotations

import numpy as np
import onnx

from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.edits import GraphEdits
from deploysparse.graph.rules.helpers import (
    attr,
    constant,
    input_axis,
    padded_constant,
    pin_all,
    same_channels,
    text,
)
from deploysparse.graph.rules.registry import rule


@rule("Resize", "Upsample", rewrite=lambda node, s: _resize_rewrite(node, s), zero_to_zero=True)
def _resize(node: onnx.NodeProto, t: ChannelTable) -> None:
    same_channels(node, t, "resize changes the channel count")


def _resize_rewrite(node: onnx.NodeProto, s: GraphEdits) -> None:
    if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
        return
    sizes = s.weights.get(node.input[3])
    if sizes is None:
        return
    new_sizes = np.array(sizes, copy=True)
    new_sizes[1] = int(s.keep(node.output[0]).sum())
    s.put(node, 3, new_sizes)


@rule("Pad", zero_to_zero=lambda node, t: _pad_keeps_zero(node, t), channel_axis=input_axis)
def _pad(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    pads = attr(node, "pads")
    if pads is None and len(node.input) > 1:
        pads = constant(t, node.input[1])
    rank = len(t.shapes.get(src, ()))
    if pads is None or t.channels(src) is None or t.channels(dst) != t.channels(src) or rank < 2:
        pin_all(node, t, "padding over the channel axis or unknown pads")
        return
    pads = np.asarray(pads).reshape(-1)
    if len(node.input) > 3 and node.input[3]:
        pin_all(node, t, "pad with explicit axes")
        return
    padded = bool(text(attr(node, "mode", b"constant")) == "constant" and np.any(pads > 0))
    t.flow(src, dst, constant_if="zero" if padded else "all")  # a 0 channel padded with 0 stays 0
    padded_constant(node, t, padded)


def _pad_keeps_zero(node: onnx.NodeProto, t: ChannelTable) -> bool:
    """Constant padding with value 0 (the default) adds zeros; reflect/edge copy the zeros."""
    if text(attr(node, "mode", b"constant")) != "constant":
        return True
    value = attr(node, "value")
    if value is None and len(node.input) > 2 and node.input[2]:
        value = constant(t, node.input[2])
        if value is None:
            return False
    return value is None or not np.any(value)
