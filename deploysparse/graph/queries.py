"""What criteria ask of a channel group, answered by the op rules so no criterion names an op type.

A criterion scores a group's channels from the weights that produce them (filter norms), from a
normalisation's learned scale and shift (network slimming, BN-statistics similarity) or from the
activations its consumers read (data-driven criteria). Which initializer holds a filter, which input of
a BatchNormalization is gamma and which tensor a Conv or Gemm multiplies are op knowledge: the rules
own it, and these queries read it off the group's members.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deploysparse.graph.analysis import GraphAnalysis
from deploysparse.graph.groups import ChannelGroup, Member
from deploysparse.graph.rules import rule_for


@dataclass(frozen=True)
class ChannelNorm:
    """One normalisation acting on the group's channels: its per-channel scale and shift members."""

    node: str
    scale: Member
    shift: Member | None


@dataclass(frozen=True)
class GroupProducers:
    """filters: weight axes whose slices are the group's filters (a conv's or gemm's output rows);
    norms: normalisations (BatchNormalization) whose learned scale and shift act on the channels."""

    filters: list[Member] = field(default_factory=list)
    norms: list[ChannelNorm] = field(default_factory=list)


def group_producers(ga: GraphAnalysis, group: ChannelGroup) -> GroupProducers:
    """The weights and normalisation scales that produce this group's channels."""
    norms = []
    for node_name in sorted({m.node for m in group.params}):
        rule = rule_for(ga.node(node_name))
        if rule is None or rule.scale_shift is None:
            continue
        by_input = {m.input_index: m for m in group.params if m.node == node_name}
        scale_index, shift_index = rule.scale_shift
        if scale_index in by_input:
            norms.append(ChannelNorm(node_name, by_input[scale_index], by_input.get(shift_index)))
    return GroupProducers(filters=list(group.producers), norms=norms)


@dataclass(frozen=True)
class ConsumerView:
    """The data a consumer weight multiplies: `tensor`, its features on `axis` (-1: last axis, the
    leading ones are points), and how: "conv" (an ungrouped conv over patches) or "dense"."""

    tensor: str
    axis: int
    kind: str


def consumer_input(ga: GraphAnalysis, member: Member) -> ConsumerView | None:
    """Where a consumer member's node reads the group's channels, or None when its rule offers no
    plain per-channel view (grouped or transposed convs, a weight fed as the first operand)."""
    node = ga.node(member.node)
    rule = rule_for(node)
    reading = rule.reading(node, ga.table) if rule is not None else None
    if reading is None or reading.kind not in ("conv", "dense") or member.input_index != reading.weight_input:
        return None
    if len(node.input) <= reading.weight_input:
        return None
    return ConsumerView(node.input[reading.input_index], reading.axis, reading.kind)
