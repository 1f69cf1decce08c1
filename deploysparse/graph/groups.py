"""What the channel analysis finds: channel groups, their members, and the spaces it had to pin.

A *channel identity* is one channel that must be kept or removed everywhere at once: a conv filter,
the BN parameters that scale it, the matching input slice of every conv that reads it, and its
position in every concat or residual sum it flows through. A *group* is the set of channel
identities that live in the same tensors (one conv's filters, or a whole residual stream); criteria
score the channels of a group and a plan keeps a subset of them.

Channel c of a group is, in every member, the entry `member.index[c]` along `member.axis`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from deploysparse.records import attribute_record


@dataclass
class Member:
    """One place where a group's channels appear: an initializer axis (weights, BN parameters) or a
    tensor axis (activations).

    role: "producer" (conv/gemm weight whose output channels these are), "consumer" (a weight that
    reads these channels: conv input axis, gemm columns), "param" (per-channel constant: BN scale,
    bias, PRelu slope, broadcast constant), or "tensor" (an activation tensor).
    name: the initializer or tensor name; node/op: the node that uses it (empty for "tensor").
    index: for each group channel, its position along `axis` (for a flatten consumer, the index of the
    channel's first feature; `width` features per channel follow it).
    layout: (group size, width) positions of every channel's entries when they are not `width`
    consecutive ones (SPPF's concat of one tensor with its pooled copies holds channel c at c, c+C,
    c+2C, ...); None when consecutive. `positions()` reads either form.
    """

    role: str
    name: str
    axis: int
    index: np.ndarray
    node: str = ""
    op: str = ""
    input_index: int = -1
    width: int = 1
    layout: np.ndarray | None = None

    def positions(self) -> np.ndarray:
        """Positions along `axis` of every channel's `width` entries, channel-major (absent: 0)."""
        if self.layout is not None:
            return np.maximum(self.layout, 0).reshape(-1)
        index = np.maximum(np.asarray(self.index, dtype=np.int64), 0)
        return (index[:, None] + np.arange(self.width)[None, :]).reshape(-1)

    def to_json(self) -> dict:
        """A plain-data record for plan.json."""
        return attribute_record(self, "role", "name", "node", "op", "axis", "width")


@dataclass
class ChannelGroup:
    """Channels that share producers, per-channel constants and consumers."""

    id: str
    size: int
    members: list[Member] = field(default_factory=list)
    pinned_by: list[tuple[str, str]] = field(default_factory=list)  # (op, node) that pinned channels
    pinned_channels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    block: int = 1  # grouped conv: channels split in `block` equal parts, each must keep the same count
    # The pinned channels that are the model's own inputs or outputs (a graph input or output pins
    # them, or no filter produces them): no tool may remove those, so a --ratio does not count them,
    # while the channels an op pins count as channels the budget could not reach (deploysparse.budget).
    interface_channels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def of_role(self, role: str) -> list[Member]:
        """Members with the given role ("producer", "consumer", "param", "tensor")."""
        return [m for m in self.members if m.role == role]

    @property
    def producers(self) -> list[Member]:
        return self.of_role("producer")

    @property
    def consumers(self) -> list[Member]:
        return self.of_role("consumer")

    @property
    def params(self) -> list[Member]:
        return self.of_role("param")

    @property
    def tensors(self) -> list[Member]:
        return self.of_role("tensor")

    @property
    def prunable(self) -> bool:
        """A group can lose channels when it has a producer and not all of it is pinned."""
        return bool(self.producers) and len(self.pinned_channels) < self.size

    @property
    def held_by_ops(self) -> int:
        """How many channels an op pins (the pinned channels that are not the model's interface)."""
        return len(np.setdiff1d(self.pinned_channels, self.interface_channels))

    @property
    def label(self) -> str:
        """Human name: the producers' node names."""
        names = sorted({m.node for m in self.producers})
        return ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")


@dataclass
class PinnedSpace:
    """A group (or part of one) that may not be pruned, and the op that decided so.

    op is INTERFACE_OP for the model's own inputs and outputs. channels: how many of the group's
    channels this pin holds (a channel several ops pin is counted for the first one in graph order)."""

    group: str
    op: str
    node: str
    reason: str
    channels: int = 0

    def to_json(self) -> dict:
        return asdict(self)
