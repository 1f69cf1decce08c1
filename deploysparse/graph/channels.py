"""The channel-level bookkeeping that rules write into while the graph is analysed.

Every channel of every activation tensor is one *element*; a tensor's channels lie on axis 1 unless
the rule of the node writing it moved them (`axis`: an NHWC transpose, a MatMul's last axis). Rules
connect elements that must be kept or removed together (a BN input channel and its output channel,
the two operands of a residual add, a concat input and its place in the output) and record where
initializers line up with them (a conv's weight rows, a BN's scale). Connected components of that
graph, found with scipy in one vectorised pass, are the channel identities; no per-op special case
survives past this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx


@dataclass
class Attachment:
    """An initializer axis whose positions line up with channels of an activation tensor.

    `channels[p]` is the channel of `tensor` that position p along `axis` of initializer `name`
    belongs to. role: producer | consumer | param.
    """

    role: str
    node: str
    op: str
    input_index: int
    name: str
    axis: int
    tensor: str
    channels: np.ndarray
    sliced: bool = True  # False: the op's rule rewrites this initializer itself (grouped conv)


# The op name of the pins that keep the model's own inputs and outputs: what no tool may remove.
INTERFACE_OP = "graph"


@dataclass
class Pin:
    """A tensor whose channels must all stay, and why (op INTERFACE_OP: a graph input or output)."""

    tensor: str
    op: str
    node: str
    reason: str


@dataclass
class ChannelTable:
    """Elements (tensor, channel) and the relations between them."""

    shapes: dict[str, tuple[int, ...]]
    weights: dict[str, np.ndarray]
    # values of small tensors computed at run time from static dims (a Slice's bounds derived from
    # Shape(x)), read at the analysed input shape; rules may use them where they rewrite the input
    static: dict[str, np.ndarray] = field(default_factory=dict)
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)  # tensor -> node writing it
    base: dict[str, int] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    axis: dict[str, int] = field(default_factory=dict)  # tensor -> the axis its channels lie on
    total: int = 0
    edges_a: list[np.ndarray] = field(default_factory=list)
    edges_b: list[np.ndarray] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    pins: list[Pin] = field(default_factory=list)
    blocks: list[tuple[str, int]] = field(default_factory=list)
    # constant propagation, in node order: ("flow", src, dst) | ("source", dst, magnitude) | ("break", dst, None)
    const_log: list[tuple[str, np.ndarray, np.ndarray | None]] = field(default_factory=list)
    # tensors whose channels all enter a statistic over the channels (a LayerNormalization's mean and
    # variance): removing any channel changes every output of the node, so none is removed exactly
    statistics: list[tuple[str, str]] = field(default_factory=list)  # (tensor, node)

    # ---- elements -------------------------------------------------------------------------------
    def declare(self, tensor: str, axis: int | None = 1) -> None:
        """Give `tensor` elements along its channel `axis` if it is an activation with a static size
        there. Axis 1 (NCHW, a Gemm's features) unless the rule of the node that writes the tensor
        moved the channels (an NHWC transpose, a MatMul's last axis); the batch axis 0 and None
        (the node leaves no channel axis) give no elements."""
        if tensor in self.base or tensor in self.weights or not tensor or axis is None:
            return
        shape = self.shapes.get(tensor)
        if shape is None or len(shape) < 2 or not 1 <= axis < len(shape) or shape[axis] <= 0:
            return
        self.base[tensor] = self.total
        self.count[tensor] = shape[axis]
        self.axis[tensor] = axis
        self.total += shape[axis]

    def channels(self, tensor: str) -> int | None:
        """Channel count of an activation tensor, None when it has no channel space."""
        return self.count.get(tensor)

    def channel_axis(self, tensor: str) -> int | None:
        """The axis of `tensor` its channels lie on (1 unless a rule moved them), None without channels."""
        return self.axis.get(tensor)

    def elements(self, tensor: str, channels: np.ndarray | None = None) -> np.ndarray:
        base = self.base[tensor]
        if channels is None:
            return np.arange(base, base + self.count[tensor], dtype=np.int64)
        return base + np.asarray(channels, dtype=np.int64)

    # ---- relations ------------------------------------------------------------------------------
    def flow(
        self,
        src: str,
        dst: str,
        src_channels: np.ndarray | None = None,
        dst_channels: np.ndarray | None = None,
        constant_if: str = "all",
    ) -> None:
        """Channels of `src` become channels of `dst` one to one (kept together; constants pass).

        constant_if="all": `dst` is constant when every flow into it is (a sum); "any": when one is
        (a product: 0 * gate is 0; a non-zero constant times a live gate is caught when the dead-filter
        check reads the values and finds them varying); "zero": as "all", but only a constant 0
        stays constant (zero padding: the border of a non-zero constant differs), so the dead-filter
        check reads `src` and confirms it is exactly 0 before it removes the channel."""
        a = self.elements(src, src_channels)
        b = self.elements(dst, dst_channels)
        if len(a) != len(b):
            raise ValueError(f"flow {src} -> {dst}: {len(a)} vs {len(b)} channels")
        self.edges_a.append(a)
        self.edges_b.append(b)
        kind = {"all": "flow", "any": "flow-any", "zero": "flow-zero"}[constant_if]
        self.const_log.append((kind, a, b))

    def tie(self, a_tensor: str, b_tensor: str, a_channels: np.ndarray, b_channels: np.ndarray) -> None:
        """Keep channels together without a value flow (depthwise input -> its output filters)."""
        self.edges_a.append(self.elements(a_tensor, a_channels))
        self.edges_b.append(self.elements(b_tensor, b_channels))

    def attach(
        self,
        role: str,
        node: onnx.NodeProto,
        input_index: int,
        axis: int,
        tensor: str,
        channels: np.ndarray | None = None,
        sliced: bool = True,
    ) -> None:
        """Positions along `axis` of the node's input `input_index` line up with `tensor`'s channels."""
        name = node.input[input_index]
        if channels is None:
            channels = np.arange(self.count[tensor], dtype=np.int64)
        self.attachments.append(
            Attachment(
                role, node.name, node.op_type, input_index, name, axis, tensor, np.asarray(channels), sliced
            )
        )

    def pin(self, tensor: str, node: onnx.NodeProto | None, reason: str) -> None:
        if tensor in self.base:
            op = node.op_type if node is not None else INTERFACE_OP
            self.pins.append(Pin(tensor, op, node.name if node is not None else "", reason))

    def statistic(self, tensor: str, node: onnx.NodeProto) -> None:
        """Every channel of `tensor` enters a statistic over the channels at `node` (a LayerNorm's mean
        and variance): criteria may remove them, measuring the change; the dead-filter check never
        calls that removal exact."""
        if tensor in self.base:
            self.statistics.append((tensor, node.name))

    def block(self, tensor: str, blocks: int) -> None:
        """Channels of `tensor` fall into `blocks` equal parts that must keep equal counts."""
        self.blocks.append((tensor, blocks))

    def constant_source(self, tensor: str, magnitude: np.ndarray) -> None:
        """Output channel c is constant whatever the input when magnitude[c] is 0 (a zero filter, a
        BN scale of 0); with a dead threshold, when it is at most the threshold."""
        self.const_log.append(("source", self.elements(tensor), np.asarray(magnitude, dtype=np.float64)))

    def not_constant(self, tensor: str) -> None:
        """The op can make a constant channel non-constant (padding, broadcast gates)."""
        self.const_log.append(("break", self.elements(tensor), None))

    def constant_elements(self, threshold: float = 0.0) -> np.ndarray:
        """Which elements are constant whatever the graph input, by propagation in node order.

        An element is constant when every value flowing into it is constant (a residual sum of a
        dead and a live channel is live), or when its op makes it so (a zero filter, BN scale 0).
        """
        return self._propagate(threshold)[0]

    def zero_conditions(self, threshold: float = 0.0) -> np.ndarray:
        """Elements that must be exactly 0 for `constant_elements` to hold: the inputs of zero-padded
        flows (flow(..., constant_if="zero")) that some constant element's constancy rests on."""
        const, via = self._propagate(threshold)
        return np.unique(via[const & (via >= 0)])

    def _propagate(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(constant per element, the zero-padded input element each one's constancy came through or
        -1). A source (the op itself makes the channel constant) needs no condition upstream."""
        const = np.zeros(self.total, dtype=bool)
        has_input = np.zeros(self.total, dtype=bool)
        via = np.full(self.total, -1, dtype=np.int64)
        for kind, a, b in self.const_log:
            if kind in ("flow", "flow-zero"):
                incoming = const[a]
                const[b] = np.where(has_input[b], const[b] & incoming, incoming)
                has_input[b] = True
                if kind == "flow-zero":
                    via[b[incoming]] = a[incoming]
                else:
                    inherited = via[a]
                    via[b] = np.where(inherited >= 0, inherited, via[b])
            elif kind == "flow-any":
                const[b] |= const[a]
                has_input[b] = True
            elif kind == "source":
                made = a[b <= threshold]
                const[made] = True
                via[made] = -1
            else:
                const[a] = False
        return const, via

    def tensor_channels(self, elements: np.ndarray) -> dict[str, np.ndarray]:
        """Elements grouped back into tensor -> channel indices."""
        names = list(self.base)
        starts = np.array([self.base[n] for n in names], dtype=np.int64)
        order = np.argsort(starts)
        which = order[np.searchsorted(starts[order], elements, side="right") - 1]
        out: dict[str, np.ndarray] = {}
        for i in np.unique(which):
            name = names[int(i)]
            out[name] = np.asarray(elements)[which == i] - self.base[name]
        return out


class TableFacts:
    """The channel table's static facts, read through `self.table`: what the analysis hands its
    readers (criteria, cost, surgery) and what a rule's rewrite reads (GraphEdits) alike."""

    table: ChannelTable

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.table.shapes

    @property
    def weights(self) -> dict[str, np.ndarray]:
        return self.table.weights

    @property
    def static(self) -> dict[str, np.ndarray]:
        """Small tensors computed at run time from static dims, read at the analysed input shape."""
        return self.table.static

    @property
    def producer(self) -> dict[str, onnx.NodeProto]:
        return self.table.producer

    @property
    def attachments(self) -> list[Attachment]:
        return self.table.attachments
