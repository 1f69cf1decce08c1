"""Convolutions (Conv, ConvTranspose): filters are producers, input columns consumers; a depthwise conv
ties each channel to its own filters, a grouped one keeps equal blocks."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.edits import GraphEdits
from deploysparse.graph.rules.helpers import (
    attr,
    bias_keeps_zero,
    constant,
    filter_magnitude,
    has_padding,
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


def _is_depthwise(node: onnx.NodeProto, t: ChannelTable) -> bool:
    group = int(attr(node, "group", 1))
    return group > 1 and group == t.count.get(node.input[0], -1)


def _conv_reading(node: onnx.NodeProto, t: ChannelTable) -> Reading | None:
    """A depthwise conv is no final reader: it maps each channel to its own outputs (a constant to a
    constant, zero through zero padding to a constant), so liveness is judged where they are read."""
    if _is_depthwise(node, t):
        return None
    return Reading(0, 1, "conv" if int(attr(node, "group", 1)) == 1 else "other")


def _conv_fold_exact(node: onnx.NodeProto) -> bool:
    return int(attr(node, "group", 1)) == 1 and not has_padding(node)


def _conv_contribution(node: onnx.NodeProto, weight: np.ndarray, axis: int, values: np.ndarray) -> np.ndarray:
    """An unpadded conv sees a constant channel everywhere: each output gains sum(kernel) * value."""
    return np.tensordot(weight.sum(axis=tuple(range(2, weight.ndim))), values, axes=([axis], [0]))


def _conv_timing(node: onnx.NodeProto, t: ChannelTable) -> LayerShape | None:
    """A 2-D conv, ungrouped or depthwise, not auto-padded to SAME, times as a one-node Conv of its
    geometry at its input's size."""
    found = weight_and_input(node, t)
    if found is None:
        return None
    weight, x_shape = found
    if weight.ndim != 4 or len(x_shape) != 4:
        return None
    group = attr(node, "group", 1)
    c_in, c_out = int(x_shape[1]), int(weight.shape[0])
    depthwise = group == c_in == c_out
    if group != 1 and not depthwise:
        return None
    if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        return None
    return LayerShape(
        "conv",
        c_in,
        c_out,
        tuple(weight.shape[2:]),
        tuple(attr(node, "strides", [1, 1])),
        tuple(attr(node, "pads", [0, 0, 0, 0])),
        tuple(attr(node, "dilations", [1, 1])),
        depthwise,
        tuple(int(d) for d in x_shape[2:]),
    )


def _conv_layer(shape: LayerShape, c_in: int, c_out: int) -> onnx.ModelProto:
    """A Conv of `shape`'s geometry, c_in -> c_out channels (a depthwise one: c_in -> c_in)."""
    group = c_in if shape.depthwise else 1
    c_out = c_in if shape.depthwise else c_out
    weight = (
        np.random.default_rng(0).standard_normal((c_out, c_in // group, *shape.kernel)).astype(np.float32)
    )
    node = helper.make_node(
        "Conv",
        ["x", "w", "b"],
        ["y"],
        strides=list(shape.strides),
        pads=list(shape.pads),
        dilations=list(shape.dilations),
        group=group,
    )
    x_shape = _conv_in_shape(shape, c_in)
    return one_node_model(node, x_shape, None, {"w": weight, "b": np.zeros(c_out, np.float32)})


def _conv_in_shape(shape: LayerShape, c_in: int) -> list[int]:
    return [shape.batch, c_in, *shape.spatial]


def _conv_out_shape(shape: LayerShape, c_in: int, c_out: int) -> list[int]:
    c_out = c_in if shape.depthwise else c_out
    spatial = []
    for i, size in enumerate(shape.spatial):
        span = (shape.kernel[i] - 1) * shape.dilations[i] + 1
        spatial.append(
            (size + shape.pads[i] + shape.pads[i + len(shape.spatial)] - span) // shape.strides[i] + 1
        )
    return [shape.batch, c_out, *spatial]


LAYER_KINDS["conv"] = LayerKind(_conv_layer, _conv_in_shape, _conv_out_shape)


@rule(
    "Conv",
    rewrite=lambda node, s: _conv_rewrite(node, s),
    macs=weight_macs(
        lambda n, t, w: per_sample(t, n.output[0]) * int(np.prod(w.shape[1:])),
        lambda n, t: (n.output[0],) if _is_depthwise(n, t) else (n.input[0], n.output[0]),
    ),
    reads=_conv_reading,
    fold=Fold(
        _conv_fold_exact,
        _conv_contribution,
        why_not="the conv pads its input or groups its channels, so folding a non-zero constant channel "
        "into the bias would not be exact",
    ),
    zeroes=(1, 2),
    zero_to_zero=bias_keeps_zero,
    layer_output=True,
    timing=_conv_timing,
    absorbs_scale=1,
    adds_depth=True,
)
def _conv(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    weight = constant(t, node.input[1])
    bias_const = len(node.input) < 3 or not node.input[2] or constant(t, node.input[2]) is not None
    cin, cout = t.channels(src), t.channels(dst)
    if weight is None or not bias_const or cin is None or cout is None:
        pin_all(node, t, "weights are not constant or channel counts unknown")
        return
    group = int(attr(node, "group", 1))
    has_bias = len(node.input) > 2 and bool(node.input[2])
    if group == 1:
        t.attach("producer", node, 1, 0, dst)
        t.attach("consumer", node, 1, 1, src)
    elif group == cin and cout % cin == 0:
        # Depthwise: filter o reads only input channel o // m, so they live and die together.
        m = cout // cin
        t.attach("param", node, 1, 0, dst)
        out_ch = np.arange(cout)
        # Unpadded, a constant input channel gives a constant output; padded, only a 0 does (the
        # border sees the zero padding), and then the output is the bias, constant too.
        t.flow(src, dst, out_ch // m, out_ch, constant_if="zero" if has_padding(node) else "all")
    elif cin % group == 0 and cout % group == 0:
        t.attach("producer", node, 1, 0, dst, sliced=False)
        t.block(src, group)
        t.block(dst, group)
    else:
        pin_all(node, t, "unsupported grouping")
        return
    if has_bias:
        t.attach("param", node, 2, 0, dst)
    t.constant_source(dst, filter_magnitude(weight, 0))


def _conv_rewrite(node: onnx.NodeProto, s: GraphEdits) -> None:
    group = int(attr(node, "group", 1))
    if group == 1:
        return
    keep_in = s.keep(node.input[0])
    keep_out = s.keep(node.output[0])
    cin = len(keep_in)
    if group == cin:  # depthwise: the weight rows were sliced through the param attachment
        s.set_attr(node, "group", int(keep_in.sum()))
        return
    weight = s.array(node, 1)
    cpg_in, cpg_out = cin // group, len(keep_out) // group
    rows = []
    for o in np.flatnonzero(keep_out):
        block = o // cpg_out
        local = keep_in[block * cpg_in : (block + 1) * cpg_in]
        rows.append(weight[o][local])
    s.put(node, 1, np.stack(rows))


@rule(
    "ConvTranspose",
    macs=weight_macs(
        lambda n, t, w: (
            None
            if per_sample(t, n.input[0]) is None
            else per_sample(t, n.input[0]) * int(np.prod(w.shape[1:]))
        )
    ),
    reads=lambda node, t: Reading(0, 1, "other"),
    zeroes=(1, 2),
    zero_to_zero=bias_keeps_zero,
    layer_output=True,
)
def _conv_transpose(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    weight = constant(t, node.input[1])
    if (
        weight is None
        or int(attr(node, "group", 1)) != 1
        or t.channels(src) is None
        or t.channels(dst) is None
        or (len(node.input) > 2 and node.input[2] and constant(t, node.input[2]) is None)
    ):
        pin_all(node, t, "grouped or non-constant transposed conv")
        return
    t.attach("producer", node, 1, 1, dst)
    t.attach("consumer", node, 1, 0, src)
    if len(node.input) > 2 and node.input[2]:
        t.attach("param", node, 2, 0, dst)
    t.constant_source(dst, filter_magnitude(weight, 1))
