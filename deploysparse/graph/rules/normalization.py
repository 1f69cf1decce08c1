"""Normalisations with learned per-channel parameters (BatchNormalization, InstanceNormalization): the
parameters are sliced with the channels, BN's scale is a source for the dead-filter check and the
evidence of the bn-scale and similarity criteria."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.rules.helpers import attr, constant, pin_all
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
