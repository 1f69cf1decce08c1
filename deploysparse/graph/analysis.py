"""Channel analysis: from an ONNX graph to the groups of channels that can be removed together.

The per-op rules (graph/rules/) connect channel elements; a tensor's channels lie on axis 1 unless
the rule of the node writing it says they moved (an NHWC transpose, a MatMul's last axis). Connected
components are channel identities; identities that live in the same tensors form a group.
Everything a criterion, a budget or the surgery needs is read off the resulting `GraphAnalysis`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from deploysparse.graph.channels import INTERFACE_OP, ChannelTable, Pin, TableFacts
from deploysparse.graph.groups import ChannelGroup, Member, PinnedSpace
from deploysparse.graph.normalize import normalize
from deploysparse.graph.rules import pin_all, rule_for
from deploysparse.graph.shapes import infer_shapes
from deploysparse.run_shapes import resolve_shapes


@dataclass
class GraphAnalysis(TableFacts):
    """The normalised model, its channel table (and its facts: `shapes`, `weights`, ...) and the
    groups found in it."""

    model: onnx.ModelProto
    table: ChannelTable
    identity: np.ndarray  # element -> channel identity
    identity_group: np.ndarray  # identity -> group number
    identity_pinned: np.ndarray  # identity -> bool
    groups: list[ChannelGroup]
    group_identities: list[np.ndarray]  # group number -> identities in channel order
    pinned: list[PinnedSpace]
    input_shapes: dict[str, list[int]]
    nodes: dict[str, onnx.NodeProto] = field(default_factory=dict)

    def group(self, gid: str) -> ChannelGroup:
        """The group with id `gid` ("g3")."""
        return self.groups[self.group_index(gid)]

    def group_index(self, gid: str) -> int:
        for i, g in enumerate(self.groups):
            if g.id == gid:
                return i
        raise KeyError(gid)

    def node(self, name: str) -> onnx.NodeProto:
        return self.nodes[name]

    def tensor_identities(self, tensor: str) -> np.ndarray:
        """Identity of each channel of an activation tensor."""
        return self.identity[self.table.elements(tensor)]

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]


def analyze_graph(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None, copy: bool = True
) -> GraphAnalysis:
    """Find the channel groups of `model`. `input_shapes` fixes dynamic dims for the analysis; by
    default the model's static dims with a dynamic batch of 1 (`run_shapes.resolve_shapes`). The model is not modified unless `copy=False` (then it becomes
    the analysis' normalised model: use that when the caller loaded it and needs no pristine copy)."""
    model = normalize(model, copy=copy)
    shapes_in = {name: list(dims) for name, dims in resolve_shapes(model, input_shapes).shapes.items()}
    shapes = infer_shapes(model, shapes_in)
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    static = _complete_with_a_run(model, shapes, shapes_in, weights)
    producer = {out: node for node in model.graph.node for out in node.output}
    table = ChannelTable(shapes=shapes, weights=weights, static=static, producer=producer)
    for inp in model.graph.input:
        table.declare(inp.name)
        table.pin(inp.name, None, "graph input")
    for node in model.graph.node:
        rule = rule_for(node)
        axis = rule.output_axis(node, table) if rule is not None else 1
        for out in node.output:
            table.declare(out, axis)
        if rule is None:
            where = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            pin_all(node, table, f"no channel rule for {where}")
        elif rule.channel_axis is None and (moved := _moved_channels(node, table)):
            pin_all(node, table, f"reads channels on axis {moved}; its rule follows axis 1 only")
        else:
            rule.analyze(node, table)
    for out in model.graph.output:
        table.pin(out.name, None, "graph output")
    return _group(model, table, shapes_in)


def _moved_channels(node: onnx.NodeProto, table: ChannelTable) -> int | None:
    """The channel axis of the first input whose channels are not on axis 1, None when all are."""
    return next((a for name in node.input if (a := table.channel_axis(name)) is not None and a != 1), None)


_SEQUENCE_OPS = ("SplitToSequence", "SequenceConstruct", "SequenceInsert", "SequenceErase", "SequenceEmpty")


def _complete_with_a_run(
    model: onnx.ModelProto,
    shapes: dict[str, tuple[int, ...]],
    input_shapes: dict[str, list[int]],
    weights: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Fill in what shape inference could not: shapes it left unknown, and the values of Slice
    bounds computed from Shape(x) (the legacy exporter's torch.chunk). One ONNX Runtime run at the
    analysed input shape reads them; shapes are updated in place, bound values returned."""
    unknown = [
        out
        for node in model.graph.node
        if node.op_type not in _SEQUENCE_OPS
        for out in node.output
        if out and (out not in shapes or min(shapes[out], default=0) < 0)
    ]
    bounds = [
        name
        for node in model.graph.node
        if node.op_type == "Slice"
        for name in node.input[1:]
        if name and name not in weights
    ]
    if not unknown and not bounds:
        return {}
    from deploysparse.backends import reference_backend
    from deploysparse.backends.feeds import make_feeds

    try:
        feeds = make_feeds(model, input_shapes)
        values = reference_backend().intermediates(model, feeds, unknown + bounds)
    except Exception:  # a graph ORT cannot run keeps its unknown shapes; those channels stay pinned
        return {}
    for name in unknown:
        shapes[name] = tuple(values[name].shape)
    return {name: values[name] for name in bounds if values[name].size <= 16}


def _components(table: ChannelTable) -> np.ndarray:
    if table.edges_a:
        a = np.concatenate(table.edges_a)
        b = np.concatenate(table.edges_b)
    else:
        a = b = np.zeros(0, dtype=np.int64)
    return connected_labels(table.total, a, b)


def connected_labels(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The connected component of each of `n` nodes joined by the edges a[i]-b[i], numbered in the
    order of each component's smallest node (as scipy.sparse.csgraph numbers them).

    Union by hooking, in numpy: every root that an edge joins to a smaller root hooks onto the
    smallest one it touches, then every node points straight at its root; edges inside one component
    are dropped. Roots only ever hook onto smaller ones, so a component's root is its smallest node,
    and each round leaves fewer roots. Done here rather than by scipy.sparse.csgraph, whose import
    (scipy.sparse.linalg, scipy.linalg) cost every `prune` 0.15-0.3 s."""
    parent = np.arange(n, dtype=np.int64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    while True:
        root_a, root_b = parent[a], parent[b]
        apart = root_a != root_b
        if not apart.any():
            break
        a, b, root_a, root_b = a[apart], b[apart], root_a[apart], root_b[apart]
        np.minimum.at(parent, np.maximum(root_a, root_b), np.minimum(root_a, root_b))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    is_root = parent == np.arange(n)
    return (np.cumsum(is_root) - 1)[parent]  # roots numbered in order, every node its root's number


def _group(model: onnx.ModelProto, table: ChannelTable, input_shapes: dict[str, list[int]]) -> GraphAnalysis:
    identity = _components(table)
    n_ident = int(identity.max()) + 1 if table.total else 0
    tensors = list(table.base)  # creation order follows the graph's topological order

    pinned = np.zeros(n_ident, dtype=bool)
    pin_of_identity: dict[int, Pin] = {}
    for pin in table.pins:
        ids = np.unique(identity[table.elements(pin.tensor)])
        pinned[ids] = True
        for i in ids:
            pin_of_identity.setdefault(int(i), pin)

    has_producer = np.zeros(n_ident, dtype=bool)
    for att in table.attachments:
        if att.role == "producer":
            has_producer[identity[table.elements(att.tensor, att.channels)]] = True

    # Signature of an identity: the set of tensors it appears in. Same signature -> same group.
    tensor_of_element = np.repeat(np.arange(len(tensors)), [table.count[t] for t in tensors])
    pairs = np.unique(np.stack([identity, tensor_of_element], axis=1), axis=0)
    signature: dict[int, tuple[int, ...]] = {}
    split_at = np.flatnonzero(np.diff(pairs[:, 0])) + 1
    for chunk in np.split(pairs, split_at):
        if len(chunk):
            signature[int(chunk[0, 0])] = tuple(int(x) for x in chunk[:, 1])

    # Order groups by their first tensor, channels by position in that tensor.
    group_of_signature: dict[tuple[int, ...], int] = {}
    identity_group = np.full(n_ident, -1, dtype=np.int64)
    group_identities: list[list[int]] = []
    for tensor_index, tensor in enumerate(tensors):
        for ident in identity[table.elements(tensor)]:
            ident = int(ident)
            sig = signature[ident]
            if sig[0] != tensor_index or identity_group[ident] >= 0:
                continue
            g = group_of_signature.setdefault(sig, len(group_of_signature))
            if g == len(group_identities):
                group_identities.append([])
            identity_group[ident] = g
            group_identities[g].append(ident)
    ident_arrays = [np.array(ids, dtype=np.int64) for ids in group_identities]
    position = np.zeros(n_ident, dtype=np.int64)
    for ids in ident_arrays:
        position[ids] = np.arange(len(ids))

    # Channels nobody produces (they come from a graph input) cannot be removed either.
    interface = ~has_producer
    for ident, pin in pin_of_identity.items():
        interface[ident] |= pin.op == INTERFACE_OP
    groups = [
        ChannelGroup(
            id=f"g{g}",
            size=len(ids),
            pinned_channels=np.flatnonzero(pinned[ids] | ~has_producer[ids]),
            interface_channels=np.flatnonzero(interface[ids]),
        )
        for g, ids in enumerate(ident_arrays)
    ]
    _add_members(table, identity, identity_group, position, groups)
    pinned_spaces = _pinned_spaces(groups, ident_arrays, pin_of_identity)
    pinned_spaces += _add_blocks(table, identity, identity_group, position, groups)
    for space in pinned_spaces:
        groups[int(space.group[1:])].pinned_by.append((space.op, space.node))
    return GraphAnalysis(
        model=model,
        table=table,
        identity=identity,
        identity_group=identity_group,
        identity_pinned=pinned | ~has_producer,
        groups=groups,
        group_identities=ident_arrays,
        pinned=pinned_spaces,
        input_shapes=input_shapes,
        nodes={node.name: node for node in model.graph.node},
    )


def _members_of(
    role: str,
    name: str,
    axis: int,
    positions_ident: np.ndarray,
    identity_group: np.ndarray,
    position: np.ndarray,
    groups: list[ChannelGroup],
    **extra,
) -> None:
    """Add one Member per group that `positions_ident` (identity of each position) touches."""
    gids = identity_group[positions_ident]
    for g in np.unique(gids):
        mask = gids == g
        size = groups[g].size
        pos = np.flatnonzero(mask)
        chan = position[positions_ident[mask]]
        index = np.full(size, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(index, chan, pos)
        width = np.bincount(chan, minlength=size)
        present = width > 0
        widest = int(width[present].max()) if present.any() else 0
        groups[g].members.append(
            Member(
                role=role,
                name=name,
                axis=axis,
                index=np.where(present, index, -1),
                width=widest,
                layout=_layout(pos, chan, index, size, widest),
                **extra,
            )
        )


def _layout(pos: np.ndarray, chan: np.ndarray, first: np.ndarray, size: int, width: int) -> np.ndarray | None:
    """(size, width) positions per channel, or None when every channel's entries are `width`
    consecutive positions from its first (the usual case: one position, or a flattened channel).
    A channel with fewer entries repeats its first one; an absent channel is -1."""
    order = np.lexsort((pos, chan))
    pos, chan = pos[order], chan[order]
    rank = np.arange(len(chan)) - np.searchsorted(chan, chan, side="left")
    layout = np.full((size, width), -1, dtype=np.int64)
    layout[chan, rank] = pos
    present = layout[:, 0] >= 0
    layout = np.where((layout < 0) & present[:, None], layout[:, :1], layout)
    consecutive = first[:, None] + np.arange(width)[None, :]
    if np.array_equal(layout[present], consecutive[present]):
        return None
    return layout


def _add_members(
    table: ChannelTable,
    identity: np.ndarray,
    identity_group: np.ndarray,
    position: np.ndarray,
    groups: list[ChannelGroup],
) -> None:
    for att in table.attachments:
        _members_of(
            att.role,
            att.name,
            att.axis,
            identity[table.elements(att.tensor, att.channels)],
            identity_group,
            position,
            groups,
            node=att.node,
            op=att.op,
            input_index=att.input_index,
        )
    for tensor in table.base:
        _members_of(
            "tensor",
            tensor,
            table.axis[tensor],
            identity[table.elements(tensor)],
            identity_group,
            position,
            groups,
        )


def _add_blocks(
    table: ChannelTable,
    identity: np.ndarray,
    identity_group: np.ndarray,
    position: np.ndarray,
    groups: list[ChannelGroup],
) -> list[PinnedSpace]:
    """A grouped conv splits its input and output channels into equal blocks that must keep equal
    counts. That is a per-group constraint (`block`) when the tensor holds exactly one group, in the
    group's own channel order; anything else (a concat of two groups feeding a grouped conv) would
    tie counts across groups, so those channels are pinned instead: the pinned spaces returned."""
    spaces: list[PinnedSpace] = []
    for tensor, blocks in table.blocks:
        ids = identity[table.elements(tensor)]
        gids = identity_group[ids]
        g = int(gids[0])
        if (gids == g).all() and (position[ids] == np.arange(len(ids))).all() and len(ids) == groups[g].size:
            groups[g].block = int(np.lcm(groups[g].block, blocks))
            continue
        for g in np.unique(gids):
            group = groups[g]
            touched = np.setdiff1d(position[ids[gids == g]], group.pinned_channels)
            group.pinned_channels = np.union1d(group.pinned_channels, touched)
            if len(touched):
                spaces.append(
                    PinnedSpace(
                        group=group.id,
                        op="Conv",
                        node=f"grouped conv reading {tensor}",
                        reason="a grouped conv reads these channels in blocks mixed with another group's",
                        channels=len(touched),
                    )
                )
    return spaces


def _pinned_spaces(
    groups: list[ChannelGroup], ident_arrays: list[np.ndarray], pin_of_identity: dict[int, Pin]
) -> list[PinnedSpace]:
    spaces: list[PinnedSpace] = []
    for g, ids in enumerate(ident_arrays):
        found: dict[tuple[str, str], PinnedSpace] = {}
        for ident in ids:
            pin = pin_of_identity.get(int(ident))
            if pin is None:
                continue
            space = found.get((pin.op, pin.node))
            if space is None:
                space = PinnedSpace(
                    group=groups[g].id, op=pin.op, node=pin.node or pin.tensor, reason=pin.reason
                )
                found[(pin.op, pin.node)] = space
                spaces.append(space)
            space.channels += 1
    return spaces
