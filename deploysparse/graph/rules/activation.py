"""Activations and other ops that keep every channel where it is, computed value by value: Relu,
Sigmoid, Clip, Identity, Cast, Gelu, ... (which of them map 0 to 0, and how the torch front end
computes them from a hooked layer output), and Softmax along a non-channel axis. All of them keep the
channels on whatever axis they lie."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx

from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.rules.helpers import attr, input_axis, norm_axis, pin_all, text, unary
from deploysparse.graph.rules.registry import ComputeFn, register_rule, rule

_KEEP_ZERO = (
    "Relu", "LeakyRelu", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softsign", "Mish", "Gelu", "Erf",
    "Abs", "Neg", "Sqrt", "Floor", "Ceil", "Round", "Sign", "Identity", "Dropout", "Cast",
    "ThresholdedRelu", "Sin",
)  # fmt: skip
_MOVE_ZERO = ("Sigmoid", "HardSigmoid", "Softplus", "Exp", "Log", "Reciprocal", "Cos")
# Activations ONNX Runtime computes inside the conv before them (FusedConv, or a Conv in its NCHWc
# layout): a per-layer profile has no time of their own for them.
_FUSED = ("Relu", "LeakyRelu", "HardSwish", "Sigmoid", "HardSigmoid", "Clip")


def _one_input(fn: Callable[[Any, Any], Any]) -> ComputeFn:
    """A compute for ops read off a single activation input with no parameters."""
    return lambda node, constants: (lambda xs, F: fn(xs[0], F)) if len(node.input) == 1 else None


def _with_attrs(make: Callable[[onnx.NodeProto], Callable[[Any, Any], Any]]) -> ComputeFn:
    """A compute whose function depends on the node's attributes."""

    def compute(node: onnx.NodeProto, constants: Mapping[str, np.ndarray]):
        if len(node.input) != 1:
            return None
        fn = make(node)
        return lambda xs, F: fn(xs[0], F)

    return compute


def _clip_bounds(node: onnx.NodeProto, constants: Mapping[str, np.ndarray]) -> tuple | None:
    """(min, max) of a Clip (None for an open side), or None when a bound is computed at run time."""
    if len(node.input) == 1:
        return attr(node, "min"), attr(node, "max")
    bounds: list[float | None] = [None, None]
    for slot, name in enumerate(node.input[1:3]):
        if not name:
            continue
        if name not in constants:
            return None
        bounds[slot] = float(np.asarray(constants[name]).reshape(-1)[0])
    return bounds[0], bounds[1]


def _clip_compute(node: onnx.NodeProto, constants: Mapping[str, np.ndarray]):
    bounds = _clip_bounds(node, constants)
    if bounds is None:
        return None
    low, high = bounds
    return lambda xs, F: xs[0].clamp(low, high)


def _clip_keeps_zero(node: onnx.NodeProto, t: ChannelTable) -> bool:
    bounds = _clip_bounds(node, {**t.static, **t.weights})
    if bounds is None:
        return False
    low, high = bounds
    return (low is None or low <= 0) and (high is None or high >= 0)


_COMPUTE: dict[str, ComputeFn] = {
    "Relu": _one_input(lambda x, F: F.relu(x)),
    "Sigmoid": _one_input(lambda x, F: x.sigmoid()),
    "Tanh": _one_input(lambda x, F: x.tanh()),
    "HardSwish": _one_input(lambda x, F: F.hardswish(x)),
    "Softplus": _one_input(lambda x, F: F.softplus(x)),
    "Identity": _one_input(lambda x, F: x),
    "Dropout": _one_input(lambda x, F: x),
    "LeakyRelu": _with_attrs(lambda n: lambda x, F: F.leaky_relu(x, float(attr(n, "alpha", 0.01)))),
    "Elu": _with_attrs(lambda n: lambda x, F: F.elu(x, float(attr(n, "alpha", 1.0)))),
    "HardSigmoid": _with_attrs(
        lambda n: (
            lambda x, F: (float(attr(n, "alpha", 0.2)) * x + float(attr(n, "beta", 0.5))).clamp(0.0, 1.0)
        )
    ),
    "Gelu": _with_attrs(lambda n: lambda x, F: F.gelu(x, approximate=text(attr(n, "approximate", b"none")))),
    "Clip": _clip_compute,
}


# Value by value, these ops keep the channels on whatever axis they lie (NHWC after a transpose, the
# features of a token): channel_axis=input_axis.
for _op in _KEEP_ZERO:
    register_rule(
        _op,
        unary,
        zero_to_zero=True,
        compute=_COMPUTE.get(_op),
        fused_into_producer=_op in _FUSED,
        channel_axis=input_axis,
    )
for _op in _MOVE_ZERO:
    register_rule(
        _op, unary, compute=_COMPUTE.get(_op), fused_into_producer=_op in _FUSED, channel_axis=input_axis
    )
register_rule(
    "Clip",
    unary,
    zero_to_zero=_clip_keeps_zero,
    compute=_clip_compute,
    fused_into_producer=True,
    channel_axis=input_axis,
)


@rule("Softmax", "LogSoftmax", "Hardmax", channel_axis=input_axis)
def _softmax(node: onnx.NodeProto, t: ChannelTable) -> None:
    src = node.input[0]
    rank = len(t.shapes.get(src, ()))
    axis = attr(node, "axis")  # the default differs between opsets: without one, assume the worst
    if axis is None or t.channels(src) is None or norm_axis(int(axis), rank) == t.channel_axis(src):
        pin_all(node, t, "normalises across channels")
        return
    t.flow(src, node.output[0])
