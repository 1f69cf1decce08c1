"""The masked original: the model with a plan's removed channels zeroed at their producers.

Surgery on a ReLU-style net must compute exactly what this masked model computes; the tests compare
the two on random inputs, so the surgery is checked apart from any criterion. A node that takes a
statistic over the channels (a LayerNorm's mean and variance) would still count a zeroed channel, so
its rule writes it over the kept channels only (`Rule.masked`): that is what the compact model
computes once the channel is gone.
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
    scale and shift, constants added) are zeroed; a zero BN scale and shift output 0 whatever the input.
    Statistics over the channels leave the removed ones out."""
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
    _mask_statistics(ga, kept, model.graph)
    return model


def _mask_statistics(ga: GraphAnalysis, kept: np.ndarray, graph: onnx.GraphProto) -> None:
    """Replace every node that takes a statistic over channels the plan removes by its rule's masked form."""
    replacements: dict[str, list[onnx.NodeProto]] = {}
    for tensor, node_name in ga.table.statistics:
        kept_channels = kept[ga.tensor_identities(tensor)]
        if kept_channels.all():
            continue
        node = ga.node(node_name)
        nodes, constants = rule_for(node).masked(node, kept_channels, ga.table)
        replacements[node_name] = nodes
        graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    if not replacements:
        return
    nodes = [new for node in graph.node for new in replacements.get(node.name, [node])]
    del graph.node[:]
    graph.node.extend(nodes)
