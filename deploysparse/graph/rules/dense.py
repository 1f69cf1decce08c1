"""Matrix products with a constant weight (Gemm, and MatMul on an activation of any rank: a Linear on
[N, C], on tokens [N, T, C] or on an NHWC map): weight columns or rows are the output features on the
last axis, the others read the input's channels there."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.rules.helpers import (
    attr,
    bias_keeps_zero,
    constant,
    filter_magnitude,
    per_sample,
    pin_all,
    weight_macs,
)
from deploysparse.graph.rules.registry import Fold, Reading, rule
from deploysparse.graph.rules.timing import (
    LAYER_KINDS,
    LayerKind,
    LayerShape,
    one_node_model,
    weight_and_input,
)


def _gemm_contribution(node: onnx.NodeProto, weight: np.ndarray, axis: int, values: np.ndarray) -> np.ndarray:
    return np.tensordot(weight, values, axes=([axis], [0]))


def _dense_layer(shape: LayerShape, c_in: int, c_out: int) -> onnx.ModelProto:
    """A Gemm of a (batch, c_in) input by a (c_out, c_in) weight, transposed."""
    weight = np.random.default_rng(0).standard_normal((c_out, c_in)).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    weights = {"w": weight, "b": np.zeros(c_out, np.float32)}
    return one_node_model(node, _dense_in_shape(shape, c_in), _dense_out_shape(shape, c_in, c_out), weights)


def _dense_in_shape(shape: LayerShape, c_in: int) -> list[int]:
    return [shape.batch, c_in]


def _dense_out_shape(shape: LayerShape, c_in: int, c_out: int) -> list[int]:
    return [shape.batch, c_out]


LAYER_KINDS["dense"] = LayerKind(_dense_layer, _dense_in_shape, _dense_out_shape)


def _gemm_timing(node: onnx.NodeProto, t: ChannelTable) -> LayerShape | None:
    """A Gemm of a 2-D input (not transposed) times as a one-node dense layer."""
    found = weight_and_input(node, t)
    if found is None or len(found[1]) != 2 or attr(node, "transA", 0):
        return None
    weight, x_shape = found
    return LayerShape(
        "dense", int(x_shape[1]), int(weight.shape[0] if attr(node, "transB", 0) else weight.shape[1])
    )


def _matmul_timing(node: onnx.NodeProto, t: ChannelTable) -> LayerShape | None:
    """A 2-D activation times a constant matrix: a one-node dense layer."""
    found = weight_and_input(node, t)
    if found is None or len(found[1]) != 2 or found[0].ndim != 2:
        return None
    weight, x_shape = found
    return LayerShape("dense", int(x_shape[1]), int(weight.shape[1]))


@rule(
    "Gemm",
    macs=weight_macs(
        lambda n, t, w: per_sample(t, n.output[0]) * int(w.shape[1] if attr(n, "transB", 0) else w.shape[0])
    ),
    reads=lambda node, t: Reading(0, 1, "other" if attr(node, "transA", 0) else "dense"),
    fold=Fold(lambda node: not attr(node, "transA", 0), _gemm_contribution),
    zeroes=(1, 2),
    zero_to_zero=bias_keeps_zero,
    layer_output=True,
    timing=_gemm_timing,
)
def _gemm(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    weight = constant(t, node.input[1])
    if weight is None or attr(node, "transA", 0) or t.channels(src) is None or t.channels(dst) is None:
        pin_all(node, t, "non-constant weight or transposed input")
        return
    trans_b = int(attr(node, "transB", 0))
    out_axis, in_axis = (0, 1) if trans_b else (1, 0)
    t.attach("producer", node, 1, out_axis, dst)
    t.attach("consumer", node, 1, in_axis, src)
    if len(node.input) > 2 and node.input[2]:
        bias = constant(t, node.input[2])
        if bias is None:
            pin_all(node, t, "non-constant bias")
            return
        if bias.ndim >= 1 and bias.shape[-1] == t.channels(dst) and t.channels(dst) > 1:
            t.attach("param", node, 2, bias.ndim - 1, dst)
    t.constant_source(dst, filter_magnitude(weight, out_axis))


def _matmul_axis(node: onnx.NodeProto, t: ChannelTable) -> int | None:
    """A matrix product writes its features on the last axis (axis 1 of a 2-D product)."""
    return len(t.shapes.get(node.output[0], ())) - 1


@rule(
    "MatMul",
    macs=weight_macs(lambda n, t, w: per_sample(t, n.output[0]) * int(w.shape[0])),
    reads=lambda node, t: Reading(0, -1, "dense"),
    zero_to_zero=True,
    timing=_matmul_timing,
    channel_axis=_matmul_axis,
)
def _matmul(node: onnx.NodeProto, t: ChannelTable) -> None:
    """An activation of any rank times a constant matrix (a Linear on [N, C], on the tokens of
    [N, T, C] or on an NHWC map): the weight's columns are the output features, its rows read the
    input's channels when they lie on the last axis; otherwise the input is pinned and the output is
    still a space of its own."""
    src, dst = node.input[0], node.output[0]
    weight = constant(t, node.input[1])
    if weight is None:
        pin_all(node, t, "a product of two activations (attention's scores or values): widths kept")
        return
    if weight.ndim != 2 or t.channels(dst) is None:
        pin_all(node, t, "only an activation times a constant matrix is pruned")
        return
    t.attach("producer", node, 1, 1, dst)
    if t.channels(src) is not None and t.channel_axis(src) == len(t.shapes[src]) - 1:
        t.attach("consumer", node, 1, 0, src)
    else:
        t.pin(src, node, "the matrix product reads the last axis, which does not hold this tensor's channels")
    t.constant_source(dst, filter_magnitude(weight, 1))
