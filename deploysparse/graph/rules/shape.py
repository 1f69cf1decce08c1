"""Ops that move channels or read shapes: Concat, Split, Slice (index maps on the channel axis, wherever
it lies; on other axes the channels pass), Flatten and Reshape (a channel owns a run of features),
Squeeze, Unsqueeze, Transpose (the channels move with their axis: NCHW -> NHWC puts them on the last
axis), Shape and Size (no channel values read)."""

from __future__ import annotations

import numpy as np
import onnx

from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.edits import GraphEdits
from deploysparse.graph.rules.helpers import attr, constant, input_axis, norm_axis, pin_all
from deploysparse.graph.rules.registry import rule


def _same_axis(node: onnx.NodeProto, t: ChannelTable, names: list[str]) -> int | None:
    """The channel axis every tensor in `names` shares, None when one has no channels or they differ."""
    axes = {t.channel_axis(name) for name in names}
    return axes.pop() if len(axes) == 1 and None not in axes else None


@rule("Concat", zero_to_zero=True, channel_axis=input_axis)
def _concat(node: onnx.NodeProto, t: ChannelTable) -> None:
    dst = node.output[0]
    rank = len(t.shapes.get(dst, ()))
    channel_axis = _same_axis(node, t, [dst, *node.input])
    if channel_axis is None:
        pin_all(node, t, "an operand without a channel axis (a constant?) or with its channels elsewhere")
        return
    if norm_axis(int(attr(node, "axis")), rank) != channel_axis:
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
        sizes = constant(t, node.input[1])
        return None if sizes is None else [int(v) for v in sizes]
    if attr(node, "split") is not None:
        return [int(v) for v in attr(node, "split")]
    n = len(node.output)
    if total % n == 0:
        return [total // n] * n
    first = -(-total // n)  # opset 18 num_outputs: the last chunk is smaller
    return [first] * (n - 1) + [total - first * (n - 1)]


@rule("Split", rewrite=lambda node, s: _split_rewrite(node, s), zero_to_zero=True, channel_axis=input_axis)
def _split(node: onnx.NodeProto, t: ChannelTable) -> None:
    src = node.input[0]
    rank = len(t.shapes.get(src, ()))
    total = t.channels(src)
    channel_axis = _same_axis(node, t, [src, *node.output])
    if channel_axis is None:
        pin_all(node, t, "no static channel axis")
        return
    if norm_axis(int(attr(node, "axis", 0)), rank) != channel_axis:
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


def _split_rewrite(node: onnx.NodeProto, s: GraphEdits) -> None:
    rank = len(s.shapes[node.input[0]])
    if norm_axis(int(attr(node, "axis", 0)), rank) != s.table.channel_axis(node.input[0]):
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
    axes = np.arange(len(starts)) if axes is None else np.array([norm_axis(int(a), rank) for a in axes])
    steps = np.ones(len(starts), dtype=np.int64) if steps is None else steps
    return starts, ends, axes, steps


def _clamp_range(start: int, end: int, size: int) -> tuple[int, int]:
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    return max(0, min(start, size)), max(0, min(end, size))


@rule("Slice", rewrite=lambda node, s: _slice_rewrite(node, s), zero_to_zero=True, channel_axis=input_axis)
def _slice(node: onnx.NodeProto, t: ChannelTable) -> None:
    src, dst = node.input[0], node.output[0]
    rank = len(t.shapes.get(src, ()))
    channel_axis = _same_axis(node, t, [src, dst])
    if channel_axis is None:
        pin_all(node, t, "no static channel axis")
        return
    params = _slice_params(node, {**t.static, **t.weights}, rank)
    if params is None:
        pin_all(node, t, "slice bounds are computed at run time")
        return
    starts, ends, axes, steps = params
    on_channels = [i for i, a in enumerate(axes) if a == channel_axis]
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


def _slice_rewrite(node: onnx.NodeProto, s: GraphEdits) -> None:
    src = node.input[0]
    rank = len(s.shapes[src])
    starts, ends, axes, _ = _slice_params(node, {**s.static, **s.weights}, rank)
    on_channels = [i for i, a in enumerate(axes) if a == s.table.channel_axis(src)]
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


@rule("Flatten", zero_to_zero=True)
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


@rule(
    "Reshape",
    rewrite=lambda node, s: _reshape_rewrite(node, s),
    zero_to_zero=True,
    channel_axis=lambda node, t: 1,
)
def _reshape(node: onnx.NodeProto, t: ChannelTable) -> None:
    """(N, C, *S) to (N, C, *S') or (N, C * prod(S)). Channels on another axis (the features of tokens,
    an NHWC map, a shuffle's transposed view) are pinned: a reshape there splits or merges them
    (attention's heads, Swin's windows, ShuffleNet's shuffle), which no rule follows."""
    src, dst = node.input[0], node.output[0]
    channel_axis = t.channel_axis(src)
    if channel_axis not in (None, 1):
        pin_all(
            node,
            t,
            f"reshape of channels on axis {channel_axis} (attention heads, windows, a channel shuffle): kept",
        )
        return
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


def _reshape_rewrite(node: onnx.NodeProto, s: GraphEdits) -> None:
    holder, index, position = _channel_dim_of_shape(node.input[1], s.weights, s.shapes, s.producer)
    target = holder or node
    value = np.array(s.array(target, index), copy=True)
    flat = value.reshape(-1)
    if flat[position] <= 0:  # -1 or 0: ONNX Runtime infers it, nothing to rewrite
        return
    flat[position] = int(s.keep(node.output[0]).sum())
    s.put(target, index, value)


@rule("Squeeze", "Unsqueeze", zero_to_zero=True)
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


def _permutation(node: onnx.NodeProto, t: ChannelTable) -> list[int]:
    """The Transpose's perm (default: the axes reversed)."""
    perm = attr(node, "perm")
    return list(perm) if perm is not None else list(reversed(range(len(t.shapes.get(node.input[0], ())))))


def _transpose_axis(node: onnx.NodeProto, t: ChannelTable) -> int | None:
    """The channel axis moves where the permutation puts it (NCHW -> NHWC: from 1 to 3)."""
    channel_axis = t.channel_axis(node.input[0])
    perm = _permutation(node, t)
    return perm.index(channel_axis) if channel_axis is not None and channel_axis in perm else 1


@rule("Transpose", zero_to_zero=True, channel_axis=_transpose_axis)
def _transpose(node: onnx.NodeProto, t: ChannelTable) -> None:
    if t.channels(node.input[0]) is None or t.channels(node.output[0]) != t.channels(node.input[0]):
        pin_all(node, t, "transpose moves the channel axis to the batch axis")
        return
    t.flow(node.input[0], node.output[0])


@rule("Shape", "Size", channel_axis=lambda node, t: None)
def _shape_reader(node: onnx.NodeProto, t: ChannelTable) -> None:
    """Reading a shape does not depend on channel values, wherever they lie; shapes computed from it
    adapt by themselves, and the output has no channels."""
