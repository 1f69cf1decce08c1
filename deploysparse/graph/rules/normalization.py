"""Normalisations with learned per-channel parameters (BatchNormalization, InstanceNormalization,
LayerNormalization): the parameters are sliced with the channels, BN's scale is a source for the
dead-filter check and the evidence of the bn-scale and similarity criteria.

A LayerNormalization over the channel axis (the last axis of an NHWC or token tensor) takes its mean
and variance over the channels: removing any channel, even an all-zero one, changes every other
channel's output. Its channels stay prunable by criteria (the change is measured), but the node
records a statistic (`ChannelTable.statistic`), so the dead-filter check never calls a removal exact
there, and its masked form (mean and variance over the kept channels) is what the compact model
computes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.rules.helpers import attr, constant, input_axis, norm_axis, pin_all
from deploysparse.graph.rules.registry import register_rule


def _normalization(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    params = [i for i in range(1, len(node.input)) if node.input[i]]
    if (
        t.channels(src) is None
        or (len(node.output) > 1 and any(node.output[1:]))
        or any(constant(t, node.input[i]) is None for i in params)
    ):
        pin_all(node, t, "training-mode or non-constant parameters")
        return
    t.flow(src, dst)
    for i in params:
        t.attach("param", node, i, 0, dst)
    t.constant_source(dst, np.abs(t.weights[node.input[1]]).astype(np.float64))


def _bn_inference_scale(node: onnx.NodeProto, value: Callable[[str], np.ndarray | None]) -> np.ndarray | None:
    """gamma / sqrt(var + eps), in float64: what a BatchNormalization multiplies each channel by at
    inference, and what a backend folds into the conv before it."""
    if len(node.input) < 5:
        return None
    gamma, var = value(node.input[1]), value(node.input[4])
    if gamma is None or var is None:
        return None
    eps = attr(node, "epsilon", 1e-5)
    return gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)


register_rule(
    "BatchNormalization",
    _normalization,
    zeroes=(1, 2),
    layer_output=True,
    scale_shift=(1, 2),
    fused_into_producer=True,
    inference_scale=_bn_inference_scale,
)
register_rule("InstanceNormalization", _normalization, zeroes=(1, 2), layer_output=True)


def _layer_norm(node: onnx.NodeProto, t: ChannelTable) -> None:
    """Normalised over the channel axis alone: per-channel scale and bias, a statistic over the
    channels. Normalised over axes after the channel axis only: each channel is normalised on its
    own and passes as it is. Over the channels and other axes together: pinned."""
    src, dst = node.input[0], node.output[0]
    channel_axis = t.channel_axis(src)
    rank = len(t.shapes.get(src, ()))
    params = [i for i in (1, 2) if i < len(node.input) and node.input[i]]
    if (
        channel_axis is None
        or t.channels(dst) is None
        or any(node.output[1:])
        or any(constant(t, node.input[i]) is None for i in params)
    ):
        pin_all(node, t, "training-mode outputs, non-constant parameters or no channel axis")
        return
    first = norm_axis(int(attr(node, "axis", -1)), rank)
    if first > channel_axis:
        t.flow(src, dst)
        t.not_constant(dst)  # a constant channel normalised along positions it is constant on
        return
    if first < channel_axis or channel_axis != rank - 1:
        pin_all(node, t, "normalises over the channels together with other axes")
        return
    t.flow(src, dst)
    for i in params:
        t.attach("param", node, i, t.weights[node.input[i]].ndim - 1, dst)
    t.statistic(src, node)
    t.not_constant(dst)  # every channel's output moves with the others' values


def _masked_layer_norm(
    node: onnx.NodeProto, kept: np.ndarray, t: ChannelTable
) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """LayerNormalization over the kept channels only: mean and variance as a MatMul by kept / k."""
    x, y = node.input[0], node.output[0]
    dtype = t.weights[node.input[1]].dtype
    name = f"{node.name}_masked"
    constants = {
        f"{name}_weights": (kept / kept.sum()).astype(dtype).reshape(-1, 1),
        f"{name}_eps": np.array(attr(node, "epsilon", 1e-5), dtype=dtype),
    }
    steps = [
        ("MatMul", [x, f"{name}_weights"], "mean"),
        ("Sub", [x, f"{name}_mean"], "centred"),
        ("Mul", [f"{name}_centred", f"{name}_centred"], "square"),
        ("MatMul", [f"{name}_square", f"{name}_weights"], "variance"),
        ("Add", [f"{name}_variance", f"{name}_eps"], "shifted"),
        ("Sqrt", [f"{name}_shifted"], "deviation"),
        ("Div", [f"{name}_centred", f"{name}_deviation"], "normalised"),
        ("Mul", [f"{name}_normalised", node.input[1]], "scaled"),
    ]
    nodes = [
        helper.make_node(op, inputs, [f"{name}_{out}"], name=f"{name}_{out}") for op, inputs, out in steps
    ]
    if len(node.input) > 2 and node.input[2]:
        nodes.append(helper.make_node("Add", [f"{name}_scaled", node.input[2]], [y], name=f"{name}_shift"))
    else:
        nodes[-1].output[0] = y
    return nodes, constants


register_rule(
    "LayerNormalization",
    _layer_norm,
    zeroes=(1, 2),
    channel_axis=input_axis,
    masked=_masked_layer_norm,
)
