"""The rule registry: one `Rule` per op type (and domain), what each part means, and how to add one.

A rule is looked up by the node's (domain, op type); the default domain is spelt "" or "ai.onnx". An op
without a rule pins every channel tensor it touches (the analysis does that), so an unknown op is
never pruned and never a crash. The parts are listed in the package docstring (deploysparse.graph.rules).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.edits import GraphEdits

if TYPE_CHECKING:
    from deploysparse.graph.rules.timing import LayerShape

AnalyzeFn = Callable[[onnx.NodeProto, ChannelTable], None]
RewriteFn = Callable[[onnx.NodeProto, GraphEdits], None]
# (MACs per sample, tensors whose kept fraction scales them)
MacsFn = Callable[[onnx.NodeProto, ChannelTable], tuple[int, tuple[str, ...]]]
# The op's output as a function of its activation inputs, written with the functions `F` offers
# (torch.nn.functional); None when the node's attributes are not supported.
ComputeFn = Callable[[onnx.NodeProto, Mapping[str, np.ndarray]], Callable[[list[Any], Any], Any] | None]
# A normalisation's per-channel factor at inference from stored values (`value(name)`: a stored
# tensor's values, None when the tensor is not stored); None when a value it needs is not stored.
InferenceScaleFn = Callable[[onnx.NodeProto, Callable[[str], np.ndarray | None]], np.ndarray | None]
# The axis the node's outputs keep their channels on, read from its inputs' axes in the table (None:
# the outputs have no channel axis). A rule with this part follows channels on any axis.
AxisFn = Callable[[onnx.NodeProto, ChannelTable], int | None]
# A node that takes a statistic over its input's channels (ChannelTable.statistic), written so that
# the channels `kept` marks False take no part in it: the nodes that replace it (writing its outputs)
# and the constants they read. The masked original then computes what the compact model computes.
MaskedFn = Callable[
    [onnx.NodeProto, np.ndarray, ChannelTable], tuple[list[onnx.NodeProto], dict[str, np.ndarray]]
]


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
    """Everything the package asks of one op type (the parts: the docstring of deploysparse.graph.rules)."""

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
    timing: Callable[[onnx.NodeProto, ChannelTable], LayerShape | None] | None = None
    fused_into_producer: bool = False
    absorbs_scale: int | None = None
    inference_scale: InferenceScaleFn | None = None
    adds_depth: bool = False
    merges_residual: bool = False
    channel_axis: AxisFn | None = None
    masked: MaskedFn | None = None

    def output_axis(self, node: onnx.NodeProto, table: ChannelTable) -> int | None:
        """The axis the node's outputs keep their channels on: axis 1 unless the rule follows
        channels on any axis (`channel_axis`)."""
        return self.channel_axis(node, table) if self.channel_axis is not None else 1

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

    def timed_layer(self, node: onnx.NodeProto, table: ChannelTable) -> LayerShape | None:
        """The layer this node times like on a backend (its batch left at 1), None when it is not timed."""
        return self.timing(node, table) if self.timing is not None else None


_DEFAULT_DOMAINS = ("", "ai.onnx")
RULES: dict[tuple[str, str], Rule] = {}


def _key(op_type: str, domain: str) -> tuple[str, str]:
    return ("" if domain in _DEFAULT_DOMAINS else domain, op_type)


def register_rule(
    op_types: str | Sequence[str],
    analyze: AnalyzeFn,
    *,
    domain: str = "",
    replace: bool = False,
    **parts: Any,
) -> Rule:
    """Teach the package an op: how its channels flow and everything else asked of it.

    `analyze(node, table)` is the only required part: it writes the node's channel relations into the
    `ChannelTable` (`table.flow`, `table.attach`, `table.pin`, `table.constant_source`, ...). The
    other parts are `Rule`'s fields, given by name (an unknown name is a TypeError), and default to
    "nothing": no MACs counted, not a final reader, no folding, nothing zeroed, zero not kept, not
    timed, not fused, no scale folded, no depth, no residual merge, channels on axis 1 only (a node
    that reads channels on another axis is pinned), no statistic over channels. A rule already registered for the
    op is an error unless `replace=True`, so two libraries cannot silently override each other.
    Returns the registered rule.

    Example: a custom-domain per-channel scale `y = x * s` (s of shape (C, 1, 1)) prunes through
    with `register_rule("ChannelScale", analyze, domain="my.ops", zeroes=[1], zero_to_zero=True)`
    where analyze does `table.flow(x, y)` and `table.attach("param", node, 1, 0, y)`.
    """
    names = [op_types] if isinstance(op_types, str) else list(op_types)
    if "zeroes" in parts:
        parts["zeroes"] = frozenset(int(i) for i in parts["zeroes"])
    built = Rule(analyze=analyze, **parts)
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
    """Decorator form of `register_rule`, as the op families' modules use it."""

    def register(fn: AnalyzeFn) -> AnalyzeFn:
        register_rule(op_types, fn, **parts)
        return fn

    return register
