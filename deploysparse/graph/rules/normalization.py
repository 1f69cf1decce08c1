"""Normalisations with learned per-channel parameters (BatchNormalization, InstanceNormalization): the
parameters are sliced with the channels, BN's scale is a source for the dead-filter check and the
evidence of the bn-scale and similarity criteria."""

from __future__ import annotations

import numpy as np
import onnx

from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.rules.helpers import constant, pin_all
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


register_rule(
    "BatchNormalization",
    _normalization,
    zeroes=(1, 2),
    layer_output=True,
    scale_shift=(1, 2),
    fused_into_producer=True,
)
register_rule("InstanceNormalization", _normalization, zeroes=(1, 2), layer_output=True)
