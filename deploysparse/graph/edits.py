"""The edits a rule's `rewrite` may make once a plan is chosen, and what it may read while making them.

A rule's rewrite needs four things: which channels of a tensor stay, the graph's static facts (shapes,
constant weights, run-time values read at the analysed shape, the node writing each tensor), the
current value of a node input after earlier edits, and a way to replace an input or an attribute.
`GraphEdits` holds exactly that and nothing of the surgery's passes, so `rules` depends only on this
module and on `channels`, never on the surgery or the analysis that use it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import onnx

from deploysparse.graph.channels import ChannelTable, TableFacts


class GraphEdits(TableFacts):
    """Kept-channel masks, the channel table's static facts (`shapes`, `weights`, `static`,
    `producer`), and the record of edits to node inputs and attributes (applied by the surgery when
    it writes the compact model)."""

    def __init__(self, table: ChannelTable, keep: Callable[[str], np.ndarray], opset: int) -> None:
        self.table = table
        self._keep = keep
        self.opset = opset
        self.arrays: dict[tuple[str, int], np.ndarray] = {}
        self.rewritten: set[tuple[str, int]] = set()
        self.changed: set[tuple[str, int]] = set()  # values changed beyond slicing
        self.attrs: dict[str, dict[str, object]] = defaultdict(dict)
        self.removed_attrs: dict[str, set[str]] = defaultdict(set)

    # ---- what a rewrite reads -------------------------------------------------------------------
    def keep(self, tensor: str) -> np.ndarray:
        """Boolean mask over `tensor`'s original channels: True where the channel stays."""
        return self._keep(tensor)

    def loses_channels(self, node: onnx.NodeProto) -> bool:
        """Whether any channel tensor the node reads or writes loses channels (a pinned node: never)."""
        return any(t in self.table.base and not self.keep(t).all() for t in [*node.input, *node.output])

    def array(self, node: onnx.NodeProto, index: int) -> np.ndarray:
        """The current value of the node's input `index` (after earlier edits)."""
        key = (node.name, index)
        if key not in self.arrays:
            self.arrays[key] = self.weights[node.input[index]]
        return self.arrays[key]

    # ---- what a rewrite writes ------------------------------------------------------------------
    def put(self, node: onnx.NodeProto, index: int, value: np.ndarray, changed: bool = True) -> None:
        """Replace the node's input `index` by a constant (a new input slot when index is past the end).
        `changed=False` marks a pure slice, which the surgery's record of slices already holds."""
        self.arrays[(node.name, index)] = np.asarray(value)
        self.rewritten.add((node.name, index))
        if changed:
            self.changed.add((node.name, index))

    def set_attr(self, node: onnx.NodeProto, name: str, value: object) -> None:
        self.attrs[node.name][name] = value

    def remove_attr(self, node: onnx.NodeProto, name: str) -> None:
        self.removed_attrs[node.name].add(name)
