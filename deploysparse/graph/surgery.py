"""Surgery: remove the channels a plan drops from the ONNX graph itself.

Three passes over the analysed graph: consumers absorb what the removed channels contributed
(constant channels folded into the bias, merged channels added to their representative, PFP scales),
every attached initializer is sliced along its channel axis, and the few ops whose attributes or
shape constants name a channel count are rewritten by their rule. The result computes the same
function as the original with those channels zeroed, or as the original itself for dead channels.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from deploysparse.errors import PlanError
from deploysparse.graph.analysis import GraphAnalysis
from deploysparse.graph.channels import Attachment
from deploysparse.graph.edits import GraphEdits
from deploysparse.graph.rules import rule_for
from deploysparse.plan import Plan, kept_identities


@dataclass
class SurgeryResult:
    """The compact model and a record of what changed, in the original initializer names.

    slices: initializer -> {axis: kept positions}; values: initializers whose values changed beyond
    slicing (final arrays); biases: weight initializer of a node that folds constants (its rule has a
    `fold`: Conv, Gemm) -> its final bias (also when the bias was created to hold a folded constant);
    original: the analysed model those names refer to (an exporter's renamed copy of a parameter, a
    Linear's weight transposed for a MatMul, is found there by its values).
    `deploysparse.torch.apply_plan` replays these on an nn.Module.
    """

    model: onnx.ModelProto
    slices: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    biases: dict[str, np.ndarray] = field(default_factory=dict)
    original: onnx.ModelProto | None = field(default=None, repr=False)


def rewrite_graph(ga: GraphAnalysis, plan: Plan) -> SurgeryResult:
    """Rewrite `ga.model` (not modified) so the plan's removed channels are gone."""
    validate_plan(plan, ga)
    kept_identity = kept_identities(ga, plan)
    opset = next((i.version for i in ga.model.opset_import if i.domain in ("", "ai.onnx")), 13)
    s = GraphEdits(ga.table, lambda tensor: kept_identity[ga.tensor_identities(tensor)], opset)
    result = SurgeryResult(model=onnx.ModelProto(), original=ga.model)
    bias_slots = _absorb_removed(ga, plan, s, kept_identity)
    _slice_attachments(ga, s, result)
    for node_name, (index, out_tensor) in bias_slots.items():  # biases created by folding
        node = ga.node(node_name)
        s.put(node, index, s.array(node, index)[s.keep(out_tensor)])
    for node in ga.model.graph.node:
        rule = rule_for(node)
        # Only nodes whose tensors lose channels need a rewrite (a pinned node keeps all of them).
        if rule is not None and rule.rewrite is not None and s.loses_channels(node):
            rule.rewrite(node, s)
    result.model = _materialize(ga, s, result)
    return result


def validate_plan(plan: Plan, ga: GraphAnalysis) -> None:
    """Refuse a plan the surgery could not carry out exactly: pinned channels removed, an empty
    group, uneven blocks of a grouped conv, indices out of range."""
    for gid, keep in plan.keep.items():
        try:
            group = ga.group(gid)
        except KeyError as exc:
            raise PlanError(f"plan names unknown group {gid!r}") from exc
        keep = np.asarray(keep, dtype=np.int64)
        if len(keep) == 0:
            raise PlanError(f"group {gid} ({group.label}): a plan must keep at least one channel")
        if keep.min() < 0 or keep.max() >= group.size or len(np.unique(keep)) != len(keep):
            raise PlanError(f"group {gid} ({group.label}): kept indices out of range or repeated")
        removed = np.setdiff1d(np.arange(group.size), keep)
        if len(removed) and not group.producers:
            raise PlanError(f"group {gid}: has no producer, so its channels cannot be removed")
        hit = np.intersect1d(removed, group.pinned_channels)
        if len(hit):
            by = ", ".join(f"{op} {node}" for op, node in group.pinned_by[:2]) or "a graph input/output"
            raise PlanError(f"group {gid} ({group.label}): channels {hit[:5].tolist()} are pinned by {by}")
        if group.block > 1:
            counts = np.bincount(keep // (group.size // group.block), minlength=group.block)
            if len(set(counts.tolist())) != 1:
                raise PlanError(
                    f"group {gid} ({group.label}): a grouped conv needs the same number of channels kept in "
                    f"each of its {group.block} blocks, got {counts.tolist()}"
                )


# ---- pass 1: consumers absorb the removed channels -------------------------------------------------


def _identity_factor(ga: GraphAnalysis, plan: Plan) -> np.ndarray | None:
    if not plan.scales:
        return None
    factor = np.ones(len(ga.identity_group))
    for gid, scales in plan.scales.items():
        factor[ga.group_identities[ga.group_index(gid)]] = np.asarray(scales, dtype=np.float64)
    return factor


def _absorb_removed(
    ga: GraphAnalysis, plan: Plan, s: GraphEdits, kept_identity: np.ndarray
) -> dict[str, tuple[int, str]]:
    """Fold constants, merges and scales into consumer weights and biases (full-size arrays).

    Returns node -> (bias input index, output tensor) for biases this pass touched, which still need
    slicing along the node's output channels.
    """
    factor = _identity_factor(ga, plan)
    merges = _merge_pairs(ga, plan)
    bias_slots: dict[str, tuple[int, str]] = {}
    for att in ga.attachments:
        if att.role != "consumer":
            continue
        node = ga.node(att.node)
        ids = ga.identity[ga.table.elements(att.tensor, att.channels)]
        weight = None
        if factor is not None:
            weight = s.array(node, att.input_index) * _along(
                factor[ids], att.axis, s.array(node, att.input_index).ndim
            )
        if merges:
            weight = _apply_merges(
                weight if weight is not None else s.array(node, att.input_index), att, ids, merges
            )
        if weight is not None:
            s.put(node, att.input_index, weight.astype(s.array(node, att.input_index).dtype))
        values = plan.constants.get(att.tensor)
        if values is None:
            continue
        values = np.asarray(values, dtype=np.float64)[att.channels]
        removed = ~kept_identity[ids] & np.isfinite(values) & (values != 0)
        if removed.any():
            _fold_constant(node, att, s, np.where(removed, values, 0.0), bias_slots)
    return bias_slots


def _along(vector: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = len(vector)
    return vector.reshape(shape)


def _merge_pairs(ga: GraphAnalysis, plan: Plan) -> dict[int, list[tuple[int, float]]]:
    """Removed identity -> [(kept identity, factor)]."""
    pairs: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for gid, entries in plan.merges.items():
        ids = ga.group_identities[ga.group_index(gid)]
        for src, dst, f in entries:
            pairs[int(ids[src])].append((int(ids[dst]), float(f)))
    return pairs


def _apply_merges(
    weight: np.ndarray, att: Attachment, ids: np.ndarray, merges: dict[int, list[tuple[int, float]]]
) -> np.ndarray:
    """Column dst += factor * column src, position by position (a flattened channel's k-th feature
    merges into the representative's k-th feature)."""
    weight = np.array(weight, dtype=np.float64, copy=True)
    positions: dict[int, list[int]] = defaultdict(list)
    for p, ident in enumerate(ids):
        positions[int(ident)].append(p)
    moved = np.moveaxis(weight, att.axis, 0)
    for src, targets in merges.items():
        src_pos = positions.get(src)
        if not src_pos:
            continue
        for dst, f in targets:
            dst_pos = positions.get(dst)
            if dst_pos is None or len(dst_pos) != len(src_pos):
                raise PlanError(f"merge into {att.node}: channels of different widths")
            moved[dst_pos] += f * moved[src_pos]
    return weight


def _fold_constant(
    node: onnx.NodeProto,
    att: Attachment,
    s: GraphEdits,
    values: np.ndarray,
    bias_slots: dict[str, tuple[int, str]],
) -> None:
    """bias += contribution of removed constant inputs, where the node's rule says that is exact."""
    rule = rule_for(node)
    if rule is None or rule.fold is None:
        raise PlanError(
            f"node {node.name} ({node.op_type}): cannot fold a constant input channel into a bias"
        )
    if not rule.fold.exact(node):
        raise PlanError(f"node {node.name}: a removed channel is a non-zero constant but {rule.fold.why_not}")
    dtype = s.array(node, att.input_index).dtype
    weight = s.array(node, att.input_index).astype(np.float64)
    contribution = rule.fold.contribution(node, weight, att.axis, values)
    slot = rule.fold.bias_input
    per_channel_bias = False
    if len(node.input) > slot and node.input[slot]:
        bias = s.array(node, slot).astype(np.float64)
        per_channel_bias = bias.size == len(contribution) and bias.size > 1
        bias = (
            bias.reshape(-1) if per_channel_bias else np.full(len(contribution), float(bias.reshape(-1)[0]))
        )
    else:
        bias = np.zeros(len(contribution))
    s.put(node, slot, (bias + contribution).astype(dtype))
    if not per_channel_bias:  # a new or broadcast bias has no attachment: slice it after pass 2
        bias_slots[node.name] = (slot, node.output[0])


# ---- pass 2: slice every attached initializer ------------------------------------------------------


def _slice_attachments(ga: GraphAnalysis, s: GraphEdits, result: SurgeryResult) -> None:
    for att in ga.attachments:
        if not att.sliced:
            continue
        node = ga.node(att.node)
        mask = s.keep(att.tensor)[att.channels]
        if mask.all():
            continue
        positions = np.flatnonzero(mask)
        value = s.array(node, att.input_index)
        s.put(node, att.input_index, np.take(value, positions, axis=att.axis), changed=False)
        result.slices.setdefault(att.name, {})[att.axis] = positions


# ---- pass 3: write the compact model ---------------------------------------------------------------


def _materialize(ga: GraphAnalysis, s: GraphEdits, result: SurgeryResult) -> onnx.ModelProto:
    """Build the compact model: the graph's nodes with their edits, untouched initializers copied
    once, edited ones written from their new arrays (never a full copy of the original first)."""
    model = _empty_copy(ga.model)
    graph = model.graph
    uses: dict[str, int] = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            uses[name] += 1
    original_names = {init.name for init in ga.model.graph.initializer}
    taken = original_names | {v for node in graph.node for v in node.output}
    edits: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for node_name, index in sorted(s.rewritten):
        edits[node_name].append((index, s.arrays[(node_name, index)]))
    replaced: dict[str, np.ndarray] = {}
    added: list[tuple[str, np.ndarray]] = []
    for node in graph.node:
        rule = rule_for(node)
        bias_input = rule.fold.bias_input if rule is not None and rule.fold is not None else None
        for index, value in edits.get(node.name, []):
            original = node.input[index] if index < len(node.input) else ""
            if original and uses[original] == 1 and original in original_names:
                replaced[original] = value
            else:
                base = original or (
                    f"{node.input[1]}_bias" if index == bias_input else f"{node.name}_input{index}"
                )
                name = base if base not in taken else _unique(f"{base}_{node.name}", taken)
                taken.add(name)
                added.append((name, value))
                while len(node.input) <= index:
                    node.input.append("")
                node.input[index] = name
            if index == bias_input and (node.name, index) in s.changed:
                result.biases[node.input[1]] = np.asarray(value)
            elif original and (node.name, index) in s.changed:
                result.values[original] = np.asarray(value)
        for key, value in s.attrs.get(node.name, {}).items():
            _set_attribute(node, key, value)
        for key in s.removed_attrs.get(node.name, set()):
            keep = [a for a in node.attribute if a.name != key]
            del node.attribute[:]
            node.attribute.extend(keep)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for init in ga.model.graph.initializer:
        if init.name not in used:
            continue
        if init.name in replaced:
            graph.initializer.append(numpy_helper.from_array(np.asarray(replaced[init.name]), init.name))
        else:
            graph.initializer.add().CopyFrom(init)
    for name, value in added:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return model


def _empty_copy(source: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its nodes, inputs and outputs but no initializers and no stale value_info."""
    model = onnx.ModelProto(
        ir_version=source.ir_version,
        producer_name=source.producer_name,
        producer_version=source.producer_version,
        domain=source.domain,
        model_version=source.model_version,
        doc_string=source.doc_string,
    )
    model.opset_import.extend(source.opset_import)
    model.metadata_props.extend(source.metadata_props)
    model.functions.extend(source.functions)
    graph, src = model.graph, source.graph
    graph.name = src.name
    graph.doc_string = src.doc_string
    graph.node.extend(src.node)
    graph.input.extend(src.input)
    graph.output.extend(src.output)
    return model


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        candidate = f"{name}_{n}"
        n += 1
    return candidate


def _set_attribute(node: onnx.NodeProto, key: str, value: object) -> None:
    keep = [a for a in node.attribute if a.name != key]
    del node.attribute[:]
    node.attribute.extend([*keep, helper.make_attribute(key, value)])
