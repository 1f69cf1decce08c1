"""Per-op rules: everything the package asks of one ONNX op type, in one registry.

A `Rule` owns its op, in the manner of Torch-Pruning's `BasePruningFunc` (looked up by type) and
onnx-graphsurgeon's `Graph.register` (extension by registration). It says:
- `analyze`: how the node's input channels relate to its output channels (edges, attachments, pins,
  constant sources written into a `ChannelTable`);
- `rewrite`: what besides slicing its attached initializers must change once a plan is chosen (a
  depthwise conv's group count, a Split's sizes, a Reshape's shape constant);
- `macs`: its multiply-accumulates per sample and the tensors whose kept fraction scales them;
- `reads`: where it multiplies channels by weights (a final reader of a channel: the dead-filter
  check judges liveness there, criteria read their activations there);
- `fold`: whether and how a constant input channel moves into its bias exactly (the dead-filter
  check and the surgery both ask this one object, so they cannot disagree);
- `zeroes`: which per-channel parameter inputs must be zeroed for a removed channel to output 0;
- `zero_to_zero`: whether an all-zero input channel gives an all-zero output channel;
- `layer_output` / `compute`: how a framework layer's output maps to the node (hooks on torch modules);
- `scale_shift`: the inputs holding a normalisation's learned per-channel scale and shift (BN's
  gamma and beta: the evidence of the bn-scale and similarity criteria).
An op with no rule pins every channel tensor it touches: never pruned, never a crash. `register_rule`
adds an op, including a custom-domain one, without editing this package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.edits import GraphEdits

AnalyzeFn = Callable[[onnx.NodeProto, ChannelTable], None]
RewriteFn = Callable[[onnx.NodeProto, GraphEdits], None]
# (MACs per sample, tensors whose kept fraction scales them)
MacsFn = Callable[[onnx.NodeProto, ChannelTable], tuple[int, tuple[str, ...]]]
# The op's output as a function of its activation inputs, written with the functions `F` offers
# (torch.nn.functional); None when the node's attributes are not supported.
ComputeFn = Callable[[onnx.NodeProto, Mapping[str, np.ndarray]], Callable[[list[Any], Any], Any] | None]


@dataclass(frozen=True)
class Reading:
    """Where a node multiplies channels by its weights: input `input_index`, channel axis `axis`
    (-1: features on the last axis, leading axes are points). kind: "conv" (an ungrouped conv over
    patches), "dense" (a matrix product: every feature is one point's column), "other" (grouped or
    transposed convs: a final reader, but with no plain per-channel view of its data)."""

    input_index: int
    axis: int
    kind: str
    weight_input: int = 1


@dataclass(frozen=True)
class Fold:
    """How a non-zero constant input channel moves into the node's bias.

    exact(node): whether it is exact for this node (no zero border meets the constant, no group
    mixing); contribution(node, weight, axis, values): per output channel, what the constant inputs
    (values along the weight's input `axis`) add to every output; bias_input: where the bias goes.
    """

    exact: Callable[[onnx.NodeProto], bool]
    contribution: Callable[[onnx.NodeProto, np.ndarray, int, np.ndarray], np.ndarray]
    why_not: str = "folding a constant input channel into its bias would not be exact"
    bias_input: int = 2


@dataclass(frozen=True)
class Rule:
    """Everything the package asks of one op type (see the module docstring)."""

    analyze: AnalyzeFn
    rewrite: RewriteFn | None = None
    macs: MacsFn | None = None
    reads: Callable[[onnx.NodeProto, ChannelTable], Reading | None] | None = None
    fold: Fold | None = None
    zeroes: frozenset[int] = field(default_factory=frozenset)
    zero_to_zero: bool | Callable[[onnx.NodeProto, ChannelTable], bool] = False
    layer_output: bool = False
    compute: ComputeFn | None = None
    scale_shift: tuple[int, int] | None = None

    def reading(self, node: onnx.NodeProto, table: ChannelTable) -> Reading | None:
        """Where this node reads channels with its weights, None when it does not."""
        return self.reads(node, table) if self.reads is not None else None

    def folds_exactly(self, node: onnx.NodeProto) -> bool:
        """Can a non-zero constant input channel move into this node's bias without error?"""
        return self.fold is not None and self.fold.exact(node)

    def keeps_zero(self, node: onnx.NodeProto, table: ChannelTable) -> bool:
        """Does an all-zero input channel give an all-zero output channel?"""
        z = self.zero_to_zero
        return bool(z(node, table) if callable(z) else z)


_DEFAULT_DOMAINS = ("", "ai.onnx")
RULES: dict[tuple[str, str], Rule] = {}


def _key(op_type: str, domain: str) -> tuple[str, str]:
    return ("" if domain in _DEFAULT_DOMAINS else domain, op_type)


def register_rule(
    op_types: str | Sequence[str],
    analyze: AnalyzeFn,
    *,
    domain: str = "",
    rewrite: RewriteFn | None = None,
    macs: MacsFn | None = None,
    reads: Callable[[onnx.NodeProto, ChannelTable], Reading | None] | None = None,
    fold: Fold | None = None,
    zeroes: Sequence[int] = (),
    zero_to_zero: bool | Callable[[onnx.NodeProto, ChannelTable], bool] = False,
    layer_output: bool = False,
    compute: ComputeFn | None = None,
    scale_shift: tuple[int, int] | None = None,
    replace: bool = False,
) -> Rule:
    """Teach the package an op: how its channels flow and everything else asked of it.

    `analyze(node, table)` is the only required part: it writes the node's channel relations into the
    `ChannelTable` (`table.flow`, `table.attach`, `table.pin`, `table.constant_source`, ...). The
    other parts default to "nothing": no MACs counted, not a final reader, no folding, nothing zeroed,
    zero not kept. A rule already registered for the op is an error unless `replace=True`, so two
    libraries cannot silently override each other. Returns the registered rule.

    Example: a custom-domain per-channel scale `y = x * s` (s of shape (C, 1, 1)) prunes through
    with `register_rule("ChannelScale", analyze, domain="my.ops", zeroes=[1], zero_to_zero=True)`
    where analyze does `table.flow(x, y)` and `table.attach("param", node, 1, 0, y)`.
    """
    names = [op_types] if isinstance(op_types, str) else list(op_types)
    built = Rule(
        analyze=analyze,
        rewrite=rewrite,
        macs=macs,
        reads=reads,
        fold=fold,
        zeroes=frozenset(int(i) for i in zeroes),
        zero_to_zero=zero_to_zero,
        layer_output=layer_output,
        compute=compute,
        scale_shift=scale_shift,
    )
    for op in names:
        key = _key(op, domain)
        if key in RULES and not replace:
            where = f"{domain}::{op}" if key[0] else op
            raise ValueError(f"a rule for {where} is already registered (pass replace=True to override)")
        RULES[key] = built
    return built


def unregister_rule(op_types: str | Sequence[str], domain: str = "") -> None:
    """Remove the rule for these op types (an op without a rule pins its channels)."""
    for op in [op_types] if isinstance(op_types, str) else op_types:
        RULES.pop(_key(op, domain), None)


def rule_for(node: onnx.NodeProto) -> Rule | None:
    """The rule that owns this node's op, None when no rule does."""
    return RULES.get(_key(node.op_type, node.domain))


def ops_with(predicate: Callable[[Rule], bool]) -> list[str]:
    """Names of the registered ops whose rule satisfies `predicate` (for messages and docs)."""
    return sorted(f"{d}::{op}" if d else op for (d, op), r in RULES.items() if predicate(r))


def rule(*op_types: str, **parts: Any) -> Callable[[AnalyzeFn], AnalyzeFn]:
    """Decorator form of `register_rule` for the built-in rules below."""

    def register(fn: AnalyzeFn) -> AnalyzeFn:
        register_rule(op_types, fn, **parts)
        return fn

    return register


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


def has_padding(node: onnx.NodeProto) -> bool:
    """Whether a conv or pool pads its input (explicit pads or SAME auto-padding): the package's one
    padding check."""
    pads = attr(node, "pads", []) or []
    return any(p > 0 for p in pads) or attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")


def pin_all(node: onnx.NodeProto, t: ChannelTable, reason: str) -> None:
    """Keep every channel of every activation this node reads or writes."""
    for name in [*node.input, *node.output]:
        t.pin(name, node, reason)


def _const(t: ChannelTable, name: str) -> np.ndarray | None:
    return t.weights.get(name) if name else None


# ---- ops that keep each channel where it is --------------------------------------------------------

_KEEP_ZERO = (
    "Relu", "LeakyRelu", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softsign", "Mish", "Gelu", "Erf",
    "Abs", "Neg", "Sqrt", "Floor", "Ceil", "Round", "Sign", "Identity", "Dropout", "Cast",
    "ThresholdedRelu", "Sin", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxPool",
)  # fmt: skip
_MOVE_ZERO = ("Sigmoid", "HardSigmoid", "Softplus", "Exp", "Log", "Reciprocal", "Cos")


def _same_channels(node: onnx.NodeProto, t: ChannelTable, reason: str, constant_if: str = "all") -> bool:
    """Input 0's channels become output 0's one to one; pin everything (and say False) when the
    counts differ or are unknown."""
    src, dst = node.input[0], node.output[0]
    if t.channels(src) is None or t.channels(dst) != t.channels(src):
        pin_all(node, t, reason)
        return False
    t.flow(src, dst, constant_if=constant_if)
    return True


def _unary(node: onnx.NodeProto, t: ChannelTable) -> None:
    if not _same_channels(node, t, "channel count changes or is unknown"):
        return
    for extra in node.output[1:]:  # MaxPool indices, Dropout mask
        t.pin(extra, node, "secondary output")


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
    "Gelu": _with_attrs(lambda n: lambda x, F: F.gelu(x, approximate=_text(attr(n, "approximate", b"none")))),
    "Clip": _clip_compute,
}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


for _op in _KEEP_ZERO:
    register_rule(_op, _unary, zero_to_zero=True, compute=_COMPUTE.get(_op))
for _op in _MOVE_ZERO:
    register_rule(_op, _unary, compute=_COMPUTE.get(_op))
register_rule("Clip", _unary, zero_to_zero=_clip_keeps_zero, compute=_clip_compute)


@rule("AveragePool", zero_to_zero=True)
def _average_pool(node: onnx.NodeProto, t: ChannelTable) -> None:
    # Zero padding averaged in makes a non-zero constant's border differ; a 0 stays 0.
    zero_padded = has_padding(node) and attr(node, "count_include_pad", 0)
    if _same_channels(
        node, t, "channel count changes or is unknown", constant_if="all" if not zero_padded else "zero"
    ):
        _padded_constant(node, t, zero_padded)


def _padded_constant(node: onnx.NodeProto, t: ChannelTable, padded: bool) -> None:
    """Where an op meets a border (zero padding), a constant channel stays constant only if the op
    maps 0 to 0 (its rule's `zero_to_zero`) and the constant is 0 (the flow was written with
    constant_if="zero", which the dead check confirms); otherwise the border breaks constancy."""
    if padded and not rule_for(node).keeps_zero(node, t):
        t.not_constant(node.output[0])


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


register_rule("BatchNormalization", _normalization, zeroes=(1, 2), layer_output=True, scale_shift=(1, 2))
register_rule("InstanceNormalization", _normalization, zeroes=(1, 2), layer_output=True)


@rule("PRelu", zero_to_zero=True)
def _prelu(node: onnx.NodeProto, t: ChannelTable) -> None:
    _elementwise(node, t)


# ---- elementwise ops between activations and constants ---------------------------------------------


def _channel_axis_of(operand_rank: int, out_rank: int) -> int | None:
    """Where an operand broadcast against a rank-`out_rank` output keeps the channel axis (axis 1)."""
    axis = 1 - (out_rank - operand_rank)
    return axis if axis >= 0 else None


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


def _no_constant_operand(node: onnx.NodeProto, t: ChannelTable) -> bool:
    """0 + 0 is 0; 0 + a constant is not (a sum keeps zero only when every operand is an activation)."""
    return not any(_const(t, name) is not None for name in node.input)


def _product(node: onnx.NodeProto, constants: Mapping[str, np.ndarray]):
    """x * gate(x) (SiLU) from one layer's output; a constant operand is not read here."""
    if len(node.input) != 2 or any(name in constants for name in node.input):
        return None
    return lambda xs, F: xs[0] * xs[1]


register_rule(("Add", "Sub"), _elementwise, zeroes=(0, 1), zero_to_zero=_no_constant_operand)
register_rule(("Sum", "Mean", "Max", "Min"), _elementwise, zero_to_zero=_no_constant_operand)
register_rule("Mul", _elementwise, zero_to_zero=True, compute=_product)
register_rule("Div", _elementwise, zero_to_zero=True)
register_rule("Pow", _elementwise)


# ---- producers and consumers -----------------------------------------------------------------------


def filter_magnitude(weight: np.ndarray, axis: int) -> np.ndarray:
    """Per output channel: the filter's L2 norm relative to the layer's median (0 for a zero filter).

    Relative, because a folded BN scales every filter by gamma/sqrt(var): an absolute threshold
    would mean different things in different layers.
    """
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    norms = np.sqrt(np.einsum("ij,ij->i", moved, moved, dtype=np.float64))
    median = float(np.median(norms))
    return norms / median if median > 0 else norms


def _per_sample(t: ChannelTable, tensor: str) -> int | None:
    """Elements of one sample of `tensor` (batch divided out), None when its shape is unknown."""
    shape = t.shapes.get(tensor)
    if not shape or min(shape) < 0:
        return None
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def _weight_macs(
    per_output: Callable[[onnx.NodeProto, ChannelTable, np.ndarray], int | None],
    scaled_by: Callable[[onnx.NodeProto, ChannelTable], tuple[str, ...]] = lambda n, t: (
        n.input[0],
        n.output[0],
    ),
) -> MacsFn:
    """MACs of a weight-carrying op: `per_output(node, table, weight)`, 0 when a shape is unknown."""

    def macs(node: onnx.NodeProto, t: ChannelTable) -> tuple[int, tuple[str, ...]]:
        weight = _const(t, node.input[1]) if len(node.input) > 1 else None
        count = (
            None if weight is None or _per_sample(t, node.output[0]) is None else per_output(node, t, weight)
        )
        return int(count or 0), scaled_by(node, t)

    return macs


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


def _conv_keeps_zero(node: onnx.NodeProto, t: ChannelTable) -> bool:
    bias = _const(t, node.input[2]) if len(node.input) > 2 else None
    return bias is None or not np.any(bias)


@rule(
    "Conv",
    rewrite=lambda node, s: _conv_rewrite(node, s),
    macs=_weight_macs(
        lambda n, t, w: _per_sample(t, n.output[0]) * int(np.prod(w.shape[1:])),
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
    zero_to_zero=_conv_keeps_zero,
    layer_output=True,
)
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
    macs=_weight_macs(
        lambda n, t, w: (
            None
            if _per_sample(t, n.input[0]) is None
            else _per_sample(t, n.input[0]) * int(np.prod(w.shape[1:]))
        )
    ),
    reads=lambda node, t: Reading(0, 1, "other"),
    zeroes=(1, 2),
    zero_to_zero=_conv_keeps_zero,
    layer_output=True,
)
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
    t.constant_source(dst, filter_magnitude(weight, 1))


def _gemm_contribution(node: onnx.NodeProto, weight: np.ndarray, axis: int, values: np.ndarray) -> np.ndarray:
    return np.tensordot(weight, values, axes=([axis], [0]))


@rule(
    "Gemm",
    macs=_weight_macs(
        lambda n, t, w: _per_sample(t, n.output[0]) * int(w.shape[1] if attr(n, "transB", 0) else w.shape[0])
    ),
    reads=lambda node, t: Reading(0, 1, "other" if attr(node, "transA", 0) else "dense"),
    fold=Fold(lambda node: not attr(node, "transA", 0), _gemm_contribution),
    zeroes=(1, 2),
    zero_to_zero=_conv_keeps_zero,
    layer_output=True,
)
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
    t.constant_source(dst, filter_magnitude(weight, out_axis))


@rule(
    "MatMul",
    macs=_weight_macs(lambda n, t, w: _per_sample(t, n.output[0]) * int(w.shape[0])),
    reads=lambda node, t: Reading(0, -1, "dense"),
    zero_to_zero=True,
)
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
    t.constant_source(dst, filter_magnitude(weight, 1))


# ---- ops that move channels ------------------------------------------------------------------------


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


@rule("Concat", zero_to_zero=True)
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


@rule("Split", rewrite=lambda node, s: _split_rewrite(node, s), zero_to_zero=True)
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


def _split_rewrite(node: onnx.NodeProto, s: GraphEdits) -> None:
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


@rule("Slice", rewrite=lambda node, s: _slice_rewrite(node, s), zero_to_zero=True)
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


def _slice_rewrite(node: onnx.NodeProto, s: GraphEdits) -> None:
    src = node.input[0]
    rank = len(s.shapes[src])
    starts, ends, axes, _ = _slice_params(node, {**s.static, **s.weights}, rank)
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


@rule("Reshape", rewrite=lambda node, s: _reshape_rewrite(node, s), zero_to_zero=True)
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


@rule("Transpose", zero_to_zero=True)
def _transpose(node: onnx.NodeProto, t: ChannelTable) -> None:
    perm = attr(node, "perm")
    if perm is None or list(perm[:2]) != [0, 1] or t.channels(node.input[0]) is None:
        pin_all(node, t, "transpose moves the channel axis")
        return
    t.flow(node.input[0], node.output[0])


@rule("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1", zero_to_zero=True)
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


@rule("Resize", "Upsample", rewrite=lambda node, s: _resize_rewrite(node, s), zero_to_zero=True)
def _resize(node: onnx.NodeProto, t: ChannelTable) -> None:
    _same_channels(node, t, "resize changes the channel count")


def _resize_rewrite(node: onnx.NodeProto, s: GraphEdits) -> None:
    if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
        return
    sizes = s.weights.get(node.input[3])
    if sizes is None:
        return
    new_sizes = np.array(sizes, copy=True)
    new_sizes[1] = int(s.keep(node.output[0]).sum())
    s.put(node, 3, new_sizes)


@rule("Pad", zero_to_zero=lambda node, t: _pad_keeps_zero(node, t))
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
    padded = bool(_text(attr(node, "mode", b"constant")) == "constant" and np.any(pads > 0))
    t.flow(src, dst, constant_if="zero" if padded else "all")  # a 0 channel padded with 0 stays 0
    _padded_constant(node, t, padded)


def _pad_keeps_zero(node: onnx.NodeProto, t: ChannelTable) -> bool:
    """Constant padding with value 0 (the default) adds zeros; reflect/edge copy the zeros."""
    if _text(attr(node, "mode", b"constant")) != "constant":
        return True
    value = attr(node, "value")
    if value is None and len(node.input) > 2 and node.input[2]:
        value = _const(t, node.input[2])
        if value is None:
            return False
    return value is None or not np.any(value)


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
