"""Per-op channel rules: one small entry per op type, in one registry.

Each rule says, for one node, how its inputs' channels relate to its outputs' (`analyze`, writing
into a `ChannelTable`) and, after a plan is chosen, what besides slicing its attached initializers
must change (`rewrite`: a depthwise conv's group count, a Split's sizes, a Reshape's shape
constant). An op with no rule pins every channel tensor it touches: never pruned, never a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from deploysparse.graph.channels import ChannelTable

if TYPE_CHECKING:
    from deploysparse.graph.surgery import Surgeon

AnalyzeFn = Callable[[onnx.NodeProto, ChannelTable], None]
RewriteFn = Callable[[onnx.NodeProto, "Surgeon"], None]


class Rule:
    """How one op type moves channels; `rewrite` is only needed for edits beyond slicing."""

    def __init__(self, analyze: AnalyzeFn, rewrite: RewriteFn | None = None) -> None:
        self.analyze = analyze
        self.rewrite = rewrite


RULES: dict[str, Rule] = {}


def rule(*op_types: str, rewrite: RewriteFn | None = None) -> Callable[[AnalyzeFn], AnalyzeFn]:
    """Register `analyze` (and an optional `rewrite`) for the given op types."""

    def register(fn: AnalyzeFn) -> AnalyzeFn:
        for op in op_types:
            RULES[op] = Rule(fn, rewrite)
        return fn

    return register


def attr(node: onnx.NodeProto, name: str, default=None):
    """An attribute's value, or `default` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def pin_all(node: onnx.NodeProto, t: ChannelTable, reason: str) -> None:
    """Keep every channel of every activation this node reads or writes."""
    for name in [*node.input, *node.output]:
        t.pin(name, node, reason)


def _const(t: ChannelTable, name: str) -> np.ndarray | None:
    return t.weights.get(name) if name else None


# ---- ops that keep each channel where it is --------------------------------------------------------

_UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal",
    "Floor", "Ceil", "Round", "Sign", "Clip", "Identity", "Dropout", "Cast", "ThresholdedRelu",
    "Sin", "Cos", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxPool",
)  # fmt: skip


def _same_channels(node: onnx.NodeProto, t: ChannelTable, reason: str) -> bool:
    """Input 0's channels become output 0's one to one; pin everything (and say False) when the
    counts differ or are unknown."""
    src, dst = node.input[0], node.output[0]
    if t.channels(src) is None or t.channels(dst) != t.channels(src):
        pin_all(node, t, reason)
        return False
    t.flow(src, dst)
    return True


@rule(*_UNARY)
def _unary(node: onnx.NodeProto, t: ChannelTable) -> None:
    if not _same_channels(node, t, "channel count changes or is unknown"):
        return
    for extra in node.output[1:]:  # MaxPool indices, Dropout mask
        t.pin(extra, node, "secondary output")


@rule("AveragePool")
def _average_pool(node: onnx.NodeProto, t: ChannelTable) -> None:
    _unary(node, t)
    pads = attr(node, "pads", []) or []
    padded = any(p > 0 for p in pads) or attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")
    if padded and attr(node, "count_include_pad", 0) and t.channels(node.output[0]) is not None:
        t.not_constant(node.output[0])  # zero padding averaged in makes the border differ


@rule("BatchNormalization", "InstanceNormalization")
def _normalization(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    params = [i for i in range(1, len(node.input)) if node.input[i]]
    if (
        t.channels(src) is None
        or (len(node.output) > 1 and any(node.output[1:]))
        or any(_const(t, node.input[i]) is None for i in params)
    ):
        pin_all(node, t, "training-mode or non-constant parameters")
        return
    t.flow(src, dst)
    for i in params:
        t.attach("param", node, i, 0, dst)
    t.constant_source(dst, np.abs(t.weights[node.input[1]]).astype(np.float64))


@rule("PRelu")
def _prelu(node: onnx.NodeProto, t: ChannelTable) -> None:
    _elementwise(node, t)


# ---- elementwise ops between activations and constants ---------------------------------------------


def _channel_axis_of(operand_rank: int, out_rank: int) -> int | None:
    """Where an operand broadcast against a rank-`out_rank` output keeps the channel axis (axis 1)."""
    axis = 1 - (out_rank - operand_rank)
    return axis if axis >= 0 else None


@rule("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow")
def _elementwise(node: onnx.NodeProto, t: ChannelTable) -> None:
    """Two activations: their channels are coupled (residual sums, SE gates). A constant with a
    per-channel axis is sliced with them; a broadcast one is left alone."""
    dst = node.output[0]
    out_c = t.channels(dst)
    out_rank = len(t.shapes.get(dst, ()))
    if out_c is None:
        pin_all(node, t, "no static channel axis")
        return
    live = []
    for i, name in enumerate(node.input):
        value = _const(t, name)
        if value is not None:
            axis = _channel_axis_of(value.ndim, out_rank)
            if axis is not None and value.shape[axis] == out_c and out_c > 1:
                t.attach("param", node, i, axis, dst)
            continue
        shape = t.shapes.get(name)
        if shape is None or len(shape) != out_rank:
            pin_all(node, t, "operand of another rank")
            return
        if shape[1] == out_c:
            live.append(name)
        elif shape[1] == 1:
            t.not_constant(dst)  # a broadcast gate varies along positions the channel does not see
        else:
            pin_all(node, t, "channel counts do not broadcast")
            return
    if not live:
        pin_all(node, t, "no activation operand with channels")
        return
    for name in live:
        t.flow(name, dst, constant_if="any" if node.op_type == "Mul" else "all")


# ---- producers and consumers -----------------------------------------------------------------------


def _zero_magnitude(weight: np.ndarray, axis: int) -> np.ndarray:
    """Per output channel: the filter's L2 norm relative to the layer's median (0 for a zero filter).

    Relative, because a folded BN scales every filter by gamma/sqrt(var): an absolute threshold
    would mean different things in different layers.
    """
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    norms = np.sqrt(np.einsum("ij,ij->i", moved, moved, dtype=np.float64))
    median = float(np.median(norms))
    return norms / median if median > 0 else norms


@rule("Conv", rewrite=lambda node, s: _conv_rewrite(node, s))
def _conv(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    weight = _const(t, node.input[1])
    bias_const = len(node.input) < 3 or not node.input[2] or _const(t, node.input[2]) is not None
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
        if _has_padding(node):
            t.tie(src, dst, out_ch // m, out_ch)
            t.not_constant(dst)
        else:
            t.flow(src, dst, out_ch // m, out_ch)
    elif cin % group == 0 and cout % group == 0:
        t.attach("producer", node, 1, 0, dst, sliced=False)
        t.block(src, group)
        t.block(dst, group)
    else:
        pin_all(node, t, "unsupported grouping")
        return
    if has_bias:
        t.attach("param", node, 2, 0, dst)
    t.constant_source(dst, _zero_magnitude(weight, 0))


def _has_padding(node: onnx.NodeProto) -> bool:
    pads = attr(node, "pads", []) or []
    return any(p > 0 for p in pads) or attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")


def _conv_rewrite(node: onnx.NodeProto, s: Surgeon) -> None:
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


@rule("ConvTranspose")
def _conv_transpose(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    weight = _const(t, node.input[1])
    if (
        weight is None
        or int(attr(node, "group", 1)) != 1
        or t.channels(src) is None
        or t.channels(dst) is None
        or (len(node.input) > 2 and node.input[2] and _const(t, node.input[2]) is None)
    ):
        pin_all(node, t, "grouped or non-constant transposed conv")
        return
    t.attach("producer", node, 1, 1, dst)
    t.attach("consumer", node, 1, 0, src)
    if len(node.input) > 2 and node.input[2]:
        t.attach("param", node, 2, 0, dst)
    t.constant_source(dst, _zero_magnitude(weight, 1))


@rule("Gemm")
def _gemm(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    weight = _const(t, node.input[1])
    if weight is None or attr(node, "transA", 0) or t.channels(src) is None or t.channels(dst) is None:
        pin_all(node, t, "non-constant weight or transposed input")
        return
    trans_b = int(attr(node, "transB", 0))
    out_axis, in_axis = (0, 1) if trans_b else (1, 0)
    t.attach("producer", node, 1, out_axis, dst)
    t.attach("consumer", node, 1, in_axis, src)
    if len(node.input) > 2 and node.input[2]:
        bias = _const(t, node.input[2])
        if bias is None:
            pin_all(node, t, "non-constant bias")
            return
        if bias.ndim >= 1 and bias.shape[-1] == t.channels(dst) and t.channels(dst) > 1:
            t.attach("param", node, 2, bias.ndim - 1, dst)
    t.constant_source(dst, _zero_magnitude(weight, out_axis))


@rule("MatMul")
def _matmul(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    weight = _const(t, node.input[1])
    if (
        weight is None
        or weight.ndim != 2
        or len(t.shapes.get(src, ())) != 2
        or t.channels(src) is None
        or t.channels(dst) is None
    ):
        pin_all(node, t, "only a 2-D activation times a constant matrix is pruned")
        return
    t.attach("producer", node, 1, 1, dst)
    t.attach("consumer", node, 1, 0, src)
    t.constant_source(dst, _zero_magnitude(weight, 1))


# ---- ops that move channels ------------------------------------------------------------------------


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


@rule("Concat")
def _concat(node: onnx.NodeProto, t: ChannelTable) -> None:
    dst = node.output[0]
    rank = len(t.shapes.get(dst, ()))
    if t.channels(dst) is None or any(t.channels(i) is None for i in node.input):
        pin_all(node, t, "an operand without a channel axis (a constant?)")
        return
    if _norm_axis(int(attr(node, "axis")), rank) != 1:
        for name in node.input:
            t.flow(name, dst)
        return
    offset = 0
    for name in node.input:
        c = t.channels(name)
        t.flow(name, dst, None, np.arange(offset, offset + c))
        offset += c


def _split_sizes(node: onnx.NodeProto, t: ChannelTable, total: int) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        sizes = _const(t, node.input[1])
        return None if sizes is None else [int(v) for v in sizes]
    if attr(node, "split") is not None:
        return [int(v) for v in attr(node, "split")]
    n = len(node.output)
    if total % n == 0:
        return [total // n] * n
    first = -(-total // n)  # opset 18 num_outputs: the last chunk is smaller
    return [first] * (n - 1) + [total - first * (n - 1)]


@rule("Split", rewrite=lambda node, s: _split_rewrite(node, s))
def _split(node: onnx.NodeProto, t: ChannelTable) -> None:
    src = node.input[0]
    rank = len(t.shapes.get(src, ()))
    total = t.channels(src)
    if total is None or any(t.channels(o) is None for o in node.output):
        pin_all(node, t, "no static channel axis")
        return
    if _norm_axis(int(attr(node, "axis", 0)), rank) != 1:
        for out in node.output:
            t.flow(src, out)
        return
    sizes = _split_sizes(node, t, total)
    if sizes is None:
        pin_all(node, t, "split sizes are not constant")
        return
    offset = 0
    for out, size in zip(node.output, sizes, strict=True):
        t.flow(src, out, np.arange(offset, offset + size))
        offset += size


def _split_rewrite(node: onnx.NodeProto, s: Surgeon) -> None:
    rank = len(s.shapes[node.input[0]])
    if _norm_axis(int(attr(node, "axis", 0)), rank) != 1:
        return
    sizes = np.array([int(s.keep(o).sum()) for o in node.output], dtype=np.int64)
    if len(node.input) > 1 and node.input[1]:
        s.put(node, 1, sizes)
    elif s.opset < 13:
        s.set_attr(node, "split", [int(v) for v in sizes])
    else:
        s.remove_attr(node, "num_outputs")
        s.put(node, 1, sizes)


def _slice_params(node: onnx.NodeProto, t_weights: dict[str, np.ndarray], rank: int):
    """(starts, ends, axes, steps) as int arrays, or None when any is computed at run time."""
    if len(node.input) == 1:  # opset < 10: attributes
        starts, ends = attr(node, "starts"), attr(node, "ends")
        axes = attr(node, "axes", list(range(len(starts))))
        return np.array(starts), np.array(ends), np.array(axes), np.ones(len(starts), dtype=np.int64)
    values = []
    for i in range(1, 5):
        name = node.input[i] if i < len(node.input) else ""
        if not name:
            values.append(None)
            continue
        if name not in t_weights:
            return None
        values.append(np.asarray(t_weights[name]).astype(np.int64).reshape(-1))
    starts, ends, axes, steps = values
    axes = np.arange(len(starts)) if axes is None else np.array([_norm_axis(int(a), rank) for a in axes])
    steps = np.ones(len(starts), dtype=np.int64) if steps is None else steps
    return starts, ends, axes, steps


def _clamp_range(start: int, end: int, size: int) -> tuple[int, int]:
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    return max(0, min(start, size)), max(0, min(end, size))


@rule("Slice", rewrite=lambda node, s: _slice_rewrite(node, s))
def _slice(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    rank = len(t.shapes.get(src, ()))
    if t.channels(src) is None or t.channels(dst) is None:
        pin_all(node, t, "no static channel axis")
        return
    params = _slice_params(node, {**t.static, **t.weights}, rank)
    if params is None:
        pin_all(node, t, "slice bounds are computed at run time")
        return
    starts, ends, axes, steps = params
    on_channels = [i for i, a in enumerate(axes) if a == 1]
    if not on_channels:
        if any(n in t.static for n in node.input[1:]):
            pin_all(node, t, "slice bounds are computed at run time")
            return
        t.flow(src, dst)
        return
    if any(n in t.static for n in node.input[1:]) and len(axes) != 1:
        pin_all(node, t, "slice bounds over several axes are computed at run time")
        return
    i = on_channels[0]
    if steps[i] != 1 or len(node.input) == 1:
        pin_all(node, t, "strided slice over channels")
        return
    start, end = _clamp_range(int(starts[i]), int(ends[i]), t.channels(src))
    t.flow(src, dst, np.arange(start, end))


def _slice_rewrite(node: onnx.NodeProto, s: Surgeon) -> None:
    src = node.input[0]
    rank = len(s.shapes[src])
    starts, ends, axes, _ = _slice_params(node, {**s.ga.table.static, **s.weights}, rank)
    on_channels = [i for i, a in enumerate(axes) if a == 1]
    if not on_channels:
        return
    i = on_channels[0]
    keep = s.keep(src)
    start, end = _clamp_range(int(starts[i]), int(ends[i]), len(keep))
    new_start = int(keep[:start].sum())
    new_end = new_start + int(keep[start:end].sum())
    starts, ends = starts.copy(), ends.copy()
    starts[i], ends[i] = new_start, new_end
    dtypes = [s.weights[n].dtype if n in s.weights else np.int64 for n in node.input[1:3]]
    s.put(node, 1, starts.astype(dtypes[0]))  # run-time bounds become constants here
    s.put(node, 2, ends.astype(dtypes[1]))


@rule("Flatten")
def _flatten(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    shape = t.shapes.get(src, ())
    if t.channels(src) is None or t.channels(dst) is None or int(attr(node, "axis", 1)) != 1:
        pin_all(node, t, "flatten moves the channel axis")
        return
    _flow_flattened(t, src, dst, shape)


def _flow_flattened(t: ChannelTable, src: str, dst: str, shape: tuple[int, ...]) -> None:
    """Channel c of an (N, C, *S) map owns features c*prod(S) ... (c+1)*prod(S)-1 of the output."""
    per_channel = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    c = t.channels(src)
    t.flow(src, dst, np.repeat(np.arange(c), per_channel), np.arange(c * per_channel))


def _reshape_kind(t_shapes: dict, node: onnx.NodeProto) -> str | None:
    """ "flatten" (N, C, *S) -> (N, C*prod(S)); "keep" (N, C, *S) -> (N, C, *S'); else None."""
    src, dst = t_shapes.get(node.input[0]), t_shapes.get(node.output[0])
    if not src or not dst or len(src) < 2 or len(dst) < 2 or min(src) < 0 or min(dst) < 0:
        return None
    if src[0] != dst[0]:
        return None
    if dst[1] == src[1] and int(np.prod(src[2:])) == int(np.prod(dst[2:])):
        return "keep"
    if len(dst) == 2 and dst[1] == int(np.prod(src[1:])):
        return "flatten"
    return None


@rule("Reshape", rewrite=lambda node, s: _reshape_rewrite(node, s))
def _reshape(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    kind = _reshape_kind(t.shapes, node)
    if kind is None or t.channels(src) is None or t.channels(dst) is None:
        pin_all(node, t, "reshape mixes the channel axis with others")
        return
    where = _channel_dim_of_shape(node.input[1], t.weights, t.shapes, t.producer)
    if where is None:
        pin_all(node, t, "reshape's channel count is computed at run time")
        return
    holder, index, position = where
    written = np.asarray(t.weights[(holder or node).input[index]]).reshape(-1)[position]
    if written == 0 and kind == "flatten":
        pin_all(node, t, "reshape copies the channel count into a flattened axis")
        return
    if kind == "keep":
        t.flow(src, dst)
    else:
        _flow_flattened(t, src, dst, t.shapes[src])


def _channel_dim_of_shape(
    shape_name: str,
    weights: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, ...]],
    producer: dict[str, onnx.NodeProto],
) -> tuple[onnx.NodeProto | None, int, int] | None:
    """Where a Reshape's target dim 1 (the channel or feature count) is written: in the constant shape
    itself (None, 1, 1), or in a constant input of the Concat that builds the shape at run time
    (concat node, its input index, position inside that input): dynamo writes `view(n, 16)` with a
    dynamic batch as Concat(batch, [16]). None when dim 1 itself is computed."""
    if shape_name in weights:
        return None, 1, 1
    concat = producer.get(shape_name)
    if concat is None or concat.op_type != "Concat":
        return None
    offset = 0
    for i, name in enumerate(concat.input):
        length = weights[name].size if name in weights else (shapes.get(name) or (-1,))[0]
        if length < 0:
            return None
        if offset <= 1 < offset + length:
            return (concat, i, 1 - offset) if name in weights else None
        offset += length
    return None


def _reshape_rewrite(node: onnx.NodeProto, s: Surgeon) -> None:
    holder, index, position = _channel_dim_of_shape(node.input[1], s.weights, s.shapes, s.ga.table.producer)
    target = holder or node
    value = np.array(s.array(target, index), copy=True)
    flat = value.reshape(-1)
    if flat[position] <= 0:  # -1 or 0: ONNX Runtime infers it, nothing to rewrite
        return
    flat[position] = int(s.keep(node.output[0]).sum())
    s.put(target, index, value)


@rule("Squeeze", "Unsqueeze")
def _squeeze(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    s_shape, d_shape = t.shapes.get(src, ()), t.shapes.get(dst, ())
    if (
        t.channels(src) is None
        or t.channels(dst) != t.channels(src)
        or len(s_shape) < 2
        or len(d_shape) < 2
        or s_shape[0] != d_shape[0]
    ):
        pin_all(node, t, "squeeze moves the channel axis")
        return
    t.flow(src, dst)


@rule("Transpose")
def _transpose(node: onnx.NodeProto, t: ChannelTable) -> None:
    perm = attr(node, "perm")
    if perm is None or list(perm[:2]) != [0, 1] or t.channels(node.input[0]) is None:
        pin_all(node, t, "transpose moves the channel axis")
        return
    t.flow(node.input[0], node.output[0])


@rule("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1")
def _reduce(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    rank = len(t.shapes.get(src, ()))
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = _const(t, node.input[1])
    if axes is None or t.channels(src) is None or t.channels(dst) is None:
        pin_all(node, t, "reduction over unknown axes")
        return
    axes = {_norm_axis(int(a), rank) for a in np.asarray(axes).reshape(-1)}
    if axes & {0, 1}:
        pin_all(node, t, "reduction over the channel axis")
        return
    t.flow(src, dst)


@rule("Resize", "Upsample", rewrite=lambda node, s: _resize_rewrite(node, s))
def _resize(node: onnx.NodeProto, t: ChannelTable) -> None:
    _same_channels(node, t, "resize changes the channel count")


def _resize_rewrite(node: onnx.NodeProto, s: Surgeon) -> None:
    if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
        return
    sizes = s.weights.get(node.input[3])
    if sizes is None:
        return
    new_sizes = np.array(sizes, copy=True)
    new_sizes[1] = int(s.keep(node.output[0]).sum())
    s.put(node, 3, new_sizes)


@rule("Pad")
def _pad(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    pads = attr(node, "pads")
    if pads is None and len(node.input) > 1:
        pads = _const(t, node.input[1])
    rank = len(t.shapes.get(src, ()))
    if pads is None or t.channels(src) is None or t.channels(dst) != t.channels(src) or rank < 2:
        pin_all(node, t, "padding over the channel axis or unknown pads")
        return
    pads = np.asarray(pads).reshape(-1)
    if len(node.input) > 3 and node.input[3]:
        pin_all(node, t, "pad with explicit axes")
        return
    t.flow(src, dst)
    mode = attr(node, "mode", b"constant")
    if mode == b"constant" and np.any(pads > 0):
        t.not_constant(dst)


@rule("Shape", "Size")
def _shape_reader(node: onnx.NodeProto, t: ChannelTable) -> None:
    """Reading a shape does not depend on channel values; shapes computed from it adapt by themselves."""


@rule("Softmax", "LogSoftmax", "Hardmax")
def _softmax(node: onnx.NodeProto, t: ChannelTable) -> None:
    src = node.input[0]
    rank = len(t.shapes.get(src, ()))
    axis = attr(node, "axis")  # the default differs between opsets: without one, assume the worst
    if axis is None or _norm_axis(int(axis), rank) == 1 or t.channels(src) is None:
        pin_all(node, t, "normalises across channels")
        return
    t.flow(src, node.output[0])
