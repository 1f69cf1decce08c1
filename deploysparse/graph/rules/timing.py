"""What a layer is for timing: the `LayerShape` a rule's `timing` part answers, and the one-node model
of it that the latency table times on a backend.

A latency budget times each weighted layer on its own, at a grid of widths (deploysparse.latency). Which
nodes are such layers, and what one-node model stands for them, is op knowledge: a rule's `timing`
says what layer a node times like, and the layer's kind (`LayerShape.op`, a key of LAYER_KINDS) says
how to build, feed and size that model. The op families fill LAYER_KINDS: "conv" (conv.py) and
"dense" (dense.py). A custom op answers with the kind it runs like (a pointwise conv is a 1x1
"conv"), or brings its own kind with a `LAYER_KINDS` entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.rules.helpers import identity_node

LAYER_OPSET = 17  # the opset of the one-node models


@dataclass(frozen=True)
class LayerShape:
    """What decides one layer's latency besides its channel counts. `op` is the layer's kind (a key
    of LAYER_KINDS); `key` is the latency table's cache key, so its form never changes."""

    op: str  # "conv" or "dense"
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    depthwise: bool = False
    spatial: tuple[int, ...] = ()
    batch: int = 1

    def key(self, c_in: int, c_out: int) -> str:
        return json.dumps(
            [
                self.op,
                c_in,
                c_out,
                self.kernel,
                self.strides,
                self.pads,
                self.dilations,
                self.depthwise,
                self.spatial,
                self.batch,
            ]
        )

    def in_shape(self, c_in: int) -> list[int]:
        """The shape of the one-node model's input `x` with c_in channels."""
        return LAYER_KINDS[self.op].in_shape(self, c_in)

    def out_shape(self, c_in: int, c_out: int) -> list[int]:
        """The shape of the one-node model's output `y`."""
        return LAYER_KINDS[self.op].out_shape(self, c_in, c_out)

    def model(self, c_in: int, c_out: int, null: bool = False) -> onnx.ModelProto:
        """A one-node ONNX model of this layer with c_in inputs and c_out outputs (random weights).

        null: the same inputs and outputs without the layer (the output is a broadcast constant): what
        a session run costs around the layer (feeding, allocating and copying), subtracted from it."""
        if null:
            return _null_model(self.in_shape(c_in), self.out_shape(c_in, c_out))
        return LAYER_KINDS[self.op].model(self, c_in, c_out)


@dataclass(frozen=True)
class LayerKind:
    """How the latency table builds and feeds the one-node model of one kind of layer: `model(shape,
    c_in, c_out)` reads input "x" and writes output "y"; `in_shape` and `out_shape` are their shapes."""

    model: Callable[[LayerShape, int, int], onnx.ModelProto]
    in_shape: Callable[[LayerShape, int], list[int]]
    out_shape: Callable[[LayerShape, int, int], list[int]]


LAYER_KINDS: dict[str, LayerKind] = {}


def weight_and_input(node: onnx.NodeProto, t: ChannelTable) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """A weighted node's constant weight (input 1) and its input's shape, None when either is unknown:
    what every timed layer is described from."""
    if len(node.input) < 2 or node.input[1] not in t.weights:
        return None
    x_shape = t.shapes.get(node.input[0])
    if x_shape is None:
        return None
    return t.weights[node.input[1]], x_shape


def one_node_model(
    node: onnx.NodeProto, x_shape: list[int], y_shape: list[int] | None, weights: dict[str, np.ndarray]
) -> onnx.ModelProto:
    """The model of one node reading "x" and these initializers, writing "y"."""
    graph = helper.make_graph(
        [node],
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", LAYER_OPSET)])


def _null_model(x_shape: list[int], out_shape: list[int]) -> onnx.ModelProto:
    """Input "x" copied out and output "y" broadcast from a constant: a layer's model without the layer."""
    node = helper.make_node("Expand", ["b0", "s"], ["y"])
    extra = [
        numpy_helper.from_array(np.zeros(1, np.float32), "b0"),
        numpy_helper.from_array(np.array(out_shape, np.int64), "s"),
    ]
    graph = helper.make_graph(
        [node, identity_node("x", "x_out")],
        "null",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, x_shape),
        ],
        extra,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", LAYER_OPSET)])
