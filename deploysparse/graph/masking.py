"""The masked original: the model with a plan's removed channels zeroed at their producers.

Surgery on a ReLU-style net must compute exactly what this masked model computes; the tests compare
the two on random inputs, so the surgery is checked apart from any criterion.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from deploysparse.graph.analysis import GraphAnalysis
from deploysparse.graph.rules import rule_for
from deploysparse.plan import Plan, kept_identities


def zero_channels(ga: GraphAnalysis, plan: Plan) -> onnx.ModelProto:
    """Copy of the normalised model where removed channels produce 0: producer rows and the
    per-channel parameters each op's rule lists in `zeroes` (conv/gemm biases, depthwise weights, BN
    scale and shift, constants added) are zeroed; a zero BN scale and shift output 0 whatever the input."""
    kept = kept_identities(ga, plan)
    model = onnx.ModelProto()
    model.CopyFrom(ga.model)
    inits = {init.name: init for init in model.graph.initializer}
    arrays = {name: numpy_helper.to_array(init).copy() for name, init in inits.items()}
    for att in ga.attachments:
        zeroes_output = att.role == "producer" or (
            att.role == "param" and att.input_index in rule_for(ga.node(att.node)).zeroes
        )
        if not zeroes_output:
            continue
        removed = ~kept[ga.identity[ga.table.elements(att.tensor, att.channels)]]
        if removed.any():
            moved = np.moveaxis(arrays[att.name], att.axis, 0)
            moved[np.flatnonzero(removed)] = 0
    for name, init in inits.items():
        init.CopyFrom(numpy_helper.from_array(arrays[name], name))
    return model
