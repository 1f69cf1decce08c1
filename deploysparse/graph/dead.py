"""Dead filters: channels whose output is provably constant (Mehta et al. 2019's implicit sparsity).

A channel is dead when every value its consumers read is constant whatever the input: its filter is
all zeros, or a BN scale of 0 sits on every path (constant propagation in channels.py). The
constant c each consumer sees is read off one run of the graph; c = 0 (a ReLU after a negative
shift) is removed as is, c != 0 is folded into the consumers' bias where that is exact (Gemm, an
unpadded conv) and kept otherwise. With a threshold, near-zero filters count too: then the removal is
not exact, the folded value is the calibration mean, and the caller measures the output change.
A channel that enters a statistic over the channels (a LayerNorm's mean and variance) is never dead:
removing it would change every other channel; a note says so when it is constant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from deploysparse.backends import reference_backend
from deploysparse.backends.feeds import make_feeds
from deploysparse.graph.analysis import GraphAnalysis
from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.rules import rule_for

# The paper's authors keep a channel only if |gamma| > 1e-3; on folded weights the same threshold is
# read relative to the layer's median filter norm (rules.filter_magnitude).
DEFAULT_DEAD_THRESHOLD = 1e-3
# Samples read for the constant values: exact constants need one; a near-dead channel's mean is
# settled long before 64 (its spread is tiny by definition), and the run is most of the check's cost.
VALUE_SAMPLES = 64
# How far apart (relative to its value) the readings of a channel the propagation proves constant may
# be and still be one constant: ONNX Runtime's vectorised activations round differently at different
# positions (a dead filter's constant through PP-OCRv4's HardSwish read 1.3e-5 apart), while what the
# check is there to catch, a constant that zero padding changes at the border, differs by its whole size.
CONSTANT_SPREAD = 1e-4


@dataclass
class DeadFilters:
    """channels: group id -> removable dead channels; constants: read tensor -> per-channel value
    (NaN where not constant), for folding; kept: messages for constant channels that stay; inexact:
    group id -> those of `channels` that are near-zero filters (--dead-threshold), not exactly
    constant: removing one of them changes the output a little, which prune then measures."""

    channels: dict[str, np.ndarray] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    inexact: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(sum(len(v) for v in self.channels.values()))


def find_dead(
    ga: GraphAnalysis,
    threshold: float = DEFAULT_DEAD_THRESHOLD,
    feeds: Mapping[str, np.ndarray] | None = None,
) -> DeadFilters:
    """Dead channels of every prunable group. Exactly constant channels are found whatever the data;
    with `threshold` > 0 near-zero filters count too, and `feeds` (calibration data, else a random
    batch) gives the mean value that replaces them."""
    table = ga.table
    constant = table.constant_elements(threshold)
    exactly = table.constant_elements(0.0) if threshold > 0 else constant
    readers = [
        (n, t) for n in ga.model.graph.node if (t := _read_tensor(n, table)) is not None and t in table.base
    ]
    n_ident = len(ga.identity_group)
    all_const = np.ones(n_ident, dtype=bool)
    all_exact = np.ones(n_ident, dtype=bool)
    read_tensors: dict[str, list] = {}
    for node, tensor in readers:
        elements = table.elements(tensor)
        np.logical_and.at(all_const, ga.identity[elements], constant[elements])
        np.logical_and.at(all_exact, ga.identity[elements], exactly[elements])
        read_tensors.setdefault(tensor, []).append(node)
    result = DeadFilters()
    candidate = all_const & ~ga.identity_pinned
    candidate &= ~_kept_for_statistics(ga, candidate, result.kept)
    if not candidate.any():
        return result
    conditions = table.zero_conditions(threshold)
    conditions = conditions[candidate[ga.identity[conditions]]]
    zero_checks = list(table.tensor_channels(conditions).items())
    tensors = [t for t in read_tensors if candidate[ga.identity[table.elements(t)]].any()]
    data = feeds if feeds is not None else make_feeds(ga.model, ga.input_shapes, min_batch=2)
    data = {name: value[:VALUE_SAMPLES] for name, value in data.items()}
    values = reference_backend().intermediates(ga.model, data, tensors + [t for t, _ in zero_checks])
    for tensor, channels in zero_checks:
        # A constant passed zero padding: only an exact 0 stays constant at the border.
        moved = _per_channel(values[tensor], table.axis[tensor])[channels]
        nonzero = np.any(moved != 0, axis=1)
        candidate[ga.identity[table.elements(tensor, channels[nonzero])]] = False
    removable = candidate.copy()
    for tensor in tensors:
        ids = ga.identity[table.elements(tensor)]
        value = _per_channel(values[tensor].astype(np.float64), table.axis[tensor])
        per_channel = np.where(all_exact[ids], _channel_values(value, True), _channel_values(value, False))
        # A near-dead channel's mean of 1e-9 is zero for every purpose: removing it outright changes
        # the output by less than folding would be worth, and folding may not be exact.
        negligible = ~all_exact[ids] & (np.abs(per_channel) <= 1e-6 * max(float(np.abs(value).max()), 1e-30))
        per_channel = np.where(negligible, 0.0, per_channel)
        result.constants[tensor] = np.where(candidate[ids], per_channel, np.nan)
        nonzero = candidate[ids] & ~np.isclose(per_channel, 0.0, atol=0.0) & np.isfinite(per_channel)
        unfoldable = ~np.isfinite(per_channel) & candidate[ids]
        for node in read_tensors[tensor]:
            if not rule_for(node).folds_exactly(node):
                unfoldable |= nonzero
        readers_named = ", ".join(n.name for n in read_tensors[tensor])
        for i in np.flatnonzero(unfoldable):
            if removable[ids[i]]:
                result.kept.append(_kept_message(tensor, i, per_channel[i], value, readers_named))
        removable[ids[unfoldable]] = False
        # Only removable dead channels carry a value to fold: a constant channel kept here and
        # removed later by a ranking criterion is an ordinary (lossy, measured) removal.
        result.constants[tensor] = np.where(removable[ids], result.constants[tensor], np.nan)
    for g, ids in enumerate(ga.group_identities):
        group = ga.groups[g]
        dead = np.setdiff1d(np.flatnonzero(removable[ids]), group.pinned_channels)
        dead = _balance_blocks(dead, group.size, group.block)
        if len(dead) == group.size:  # a group keeps one channel so the tensors stay well-formed
            dead = (
                dead[1:]
                if group.block == 1
                else _balance_blocks(dead[group.block :], group.size, group.block)
            )
        if len(dead):
            result.channels[group.id] = dead
            near_zero = dead[~all_exact[ids[dead]]]
            if len(near_zero):
                result.inexact[group.id] = near_zero
    return result


def _kept_for_statistics(ga: GraphAnalysis, candidate: np.ndarray, notes: list[str]) -> np.ndarray:
    """Candidate identities that enter a statistic over the channels (a channel mean, a LayerNorm's
    mean and variance): removing one changes every other channel's output, so none is dead however
    constant it is where it is read. One note per such node names the channels it keeps."""
    table = ga.table
    kept = np.zeros(len(candidate), dtype=bool)
    for tensor, node in table.statistics:
        ids = ga.identity[table.elements(tensor)]
        held = np.flatnonzero(candidate[ids])
        kept[ids[held]] = True
        if len(held):
            notes.append(
                f"{tensor} channels {held[:8].tolist()}{' ...' if len(held) > 8 else ''} are constant but "
                f"{node} takes a statistic over the channels (removing one changes every other "
                "channel's output); kept"
            )
    return kept


def _kept_message(tensor: str, channel: int, constant: float, rows: np.ndarray, readers: str) -> str:
    """Why a dead channel stays: the value its readers would have to absorb, or (NaN from
    `_channel_values`) that it has no one value here: it differs between samples or positions.
    `rows`: the tensor's values from `_per_channel`."""
    if np.isfinite(constant):
        return f"{tensor} channel {channel} is constant ({constant:.4g}) but {readers} cannot absorb it exactly; kept"
    seen = rows[channel]
    return (
        f"{tensor} channel {channel} comes from a dead filter but its value differs between samples or "
        f"positions ({float(seen.min()):.7g} to {float(seen.max()):.7g}, e.g. at a padded border), so "
        f"{readers} cannot absorb one constant; kept"
    )


def _per_channel(value: np.ndarray, axis: int) -> np.ndarray:
    """A tensor's values as (channels, every sample and position), its channels on `axis`."""
    return np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)


def _channel_values(moved: np.ndarray, exact: bool) -> np.ndarray:
    """Per channel (rows of `_per_channel`): the constant it holds, NaN where it varies (exact mode);
    the mean over samples and positions otherwise. A flattened (N, F) tensor gets one value per
    feature."""
    mean = moved.mean(axis=1)
    if not exact:
        return mean
    spread = moved.max(axis=1) - moved.min(axis=1)
    scale = np.maximum(np.abs(mean), 1e-30)
    return np.where(spread <= CONSTANT_SPREAD * scale, mean, np.nan)


def _read_tensor(node, table: ChannelTable) -> str | None:
    """The tensor a final reader multiplies by its weights (its rule says which input), else None."""
    rule = rule_for(node)
    reading = rule.reading(node, table) if rule is not None else None
    return node.input[reading.input_index] if reading is not None else None


def _balance_blocks(dead: np.ndarray, size: int, blocks: int) -> np.ndarray:
    """A grouped conv needs equal kept counts per block: remove only as many per block as the block
    with the fewest dead channels allows."""
    if blocks <= 1 or not len(dead):
        return dead
    width = size // blocks
    per_block = [dead[(dead >= b * width) & (dead < (b + 1) * width)] for b in range(blocks)]
    n = min(len(p) for p in per_block)
    return np.sort(np.concatenate([p[:n] for p in per_block])) if n else dead[:0]
