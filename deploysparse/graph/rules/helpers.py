"""ONNX helpers every op family's rules share (and the rest of the package reads nodes with).

`attr` is the package's one attribute reader, `readers` its one index of who reads a tensor and
`has_padding` its one padding check; the rest are the small analyses several families repeat
(`same_channels`, `unary`, `padded_constant`) and the arithmetic of weighted ops (`filter_magnitude`,
`weight_macs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import onnx
from onnx import helper

from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.rules.registry import MacsFn, rule_for


def attr(node: onnx.NodeProto, name: str, default=None):
    """An attribute's value, or `default` when the node does not set it (the package's one reader)."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def readers(nodes: Iterable[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    """The nodes that read each tensor, in graph order (the package's one index of them)."""
    index: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            index.setdefault(name, []).append(node)
    return index


def stored_tensors(graph: onnx.GraphProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every tensor stored in the graph, by the name nodes read it as: the initializers, then the
    values of Constant nodes (converters store weights there)."""
    for tensor in graph.initializer:
        yield tensor.name, tensor
    for node in graph.node:
        if node.op_type != "Constant":
            continue
        for attribute in node.attribute:
            if attribute.name == "value":
                yield node.output[0], attribute.t


def has_padding(node: onnx.NodeProto) -> bool:
    """Whether a conv or pool pads its input (explicit pads or SAME auto-padding): the package's one
    padding check."""
    pads = attr(node, "pads", []) or []
    return any(p > 0 for p in pads) or attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")


def pin_all(node: onnx.NodeProto, t: ChannelTable, reason: str) -> None:
    """Keep every channel of every activation this node reads or writes."""
    for name in [*node.input, *node.output]:
        t.pin(name, node, reason)


def kernel_node(tensor: str, producer: Mapping[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The node whose kernel computes `tensor` once a backend has fused the graph: the tensor's
    producer, followed back through nodes fused into their producer (Rule.fused_into_producer: a
    BatchNormalization or an activation after a conv); None when no node writes `tensor`."""
    source = producer.get(tensor)
    while source is not None and source.input and _fused(source):
        source = producer.get(source.input[0])
    return source


def _fused(node: onnx.NodeProto) -> bool:
    rule = rule_for(node)
    return rule is not None and rule.fused_into_producer


def identity_node(src: str, dst: str, name: str = "") -> onnx.NodeProto:
    """A node that passes `src` on as `dst` unchanged (Identity)."""
    return helper.make_node("Identity", [src], [dst], name=name)


def constant(t: ChannelTable, name: str) -> np.ndarray | None:
    """The constant value of input `name` (an initializer after normalisation), None for an activation."""
    return t.weights.get(name) if name else None


def input_axis(node: onnx.NodeProto, t: ChannelTable) -> int | None:
    """Where the node's output keeps the channels of its first input that has them, counted in the
    output's rank (broadcasting aligns trailing axes): the `channel_axis` of activations, elementwise
    ops and normalisations. Axis 1 when no input has channels."""
    out_rank = len(t.shapes.get(node.output[0], ()))
    for name in node.input:
        axis = t.channel_axis(name)
        if axis is not None:
            return axis + out_rank - len(t.shapes[name])
    return 1


def same_channels(node: onnx.NodeProto, t: ChannelTable, reason: str, constant_if: str = "all") -> bool:
    """Input 0's channels become output 0's one to one; pin everything (and say False) when the
    counts differ or are unknown."""
    src, dst = node.input[0], node.output[0]
    if t.channels(src) is None or t.channels(dst) != t.channels(src):
        pin_all(node, t, reason)
        return False
    t.flow(src, dst, constant_if=constant_if)
    return True


def unary(node: onnx.NodeProto, t: ChannelTable) -> None:
    """The analysis of an op that keeps every channel where it is (activations, pools)."""
    if not same_channels(node, t, "channel count changes or is unknown"):
        return
    for extra in node.output[1:]:  # MaxPool indices, Dropout mask
        t.pin(extra, node, "secondary output")


def padded_constant(node: onnx.NodeProto, t: ChannelTable, padded: bool) -> None:
    """Where an op meets a border (zero padding), a constant channel stays constant only if the op
    maps 0 to 0 (its rule's `zero_to_zero`) and the constant is 0 (the flow was written with
    constant_if="zero", which the dead check confirms); otherwise the border breaks constancy."""
    if padded and not rule_for(node).keeps_zero(node, t):
        t.not_constant(node.output[0])


def text(value: bytes | str) -> str:
    """A string attribute as str (onnx gives bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def norm_axis(axis: int, rank: int) -> int:
    """A possibly negative axis as its index in a rank-`rank` tensor."""
    return axis + rank if axis < 0 else axis


def filter_magnitude(weight: np.ndarray, axis: int) -> np.ndarray:
    """Per output channel: the filter's L2 norm relative to the layer's median (0 for a zero filter).

    Relative, because a folded BN scales every filter by gamma/sqrt(var): an absolute threshold
    would mean different things in different layers.
    """
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    norms = np.sqrt(np.einsum("ij,ij->i", moved, moved, dtype=np.float64))
    median = float(np.median(norms))
    return norms / median if median > 0 else norms


def per_sample(t: ChannelTable, tensor: str) -> int | None:
    """Elements of one sample of `tensor` (batch divided out), None when its shape is unknown."""
    shape = t.shapes.get(tensor)
    if not shape or min(shape) < 0:
        return None
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def weight_macs(
    per_output: Callable[[onnx.NodeProto, ChannelTable, np.ndarray], int | None],
    scaled_by: Callable[[onnx.NodeProto, ChannelTable], tuple[str, ...]] = lambda n, t: (
        n.input[0],
        n.output[0],
    ),
) -> MacsFn:
    """MACs of a weight-carrying op: `per_output(node, table, weight)`, 0 when a shape is unknown."""

    def macs(node: onnx.NodeProto, t: ChannelTable) -> tuple[int, tuple[str, ...]]:
        weight = constant(t, node.input[1]) if len(node.input) > 1 else None
        count = (
            None if weight is None or per_sample(t, node.output[0]) is None else per_output(node, t, weight)
        )
        return int(count or 0), scaled_by(node, t)

    return macs


def bias_keeps_zero(node: onnx.NodeProto, t: ChannelTable) -> bool:
    """A weighted op (bias at input 2) maps an all-zero input channel to zero when its bias is 0."""
    bias = constant(t, node.input[2]) if len(node.input) > 2 else None
    return bias is None or not np.any(bias)
