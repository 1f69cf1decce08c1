"""What every pruning criterion shares: its interface, its context, and how it reads a group's members.

A criterion scores the channels of one `ChannelGroup` (higher = more important). It reads the group's
weights through the `GraphAnalysis` and, when it needs data, the activations of the tensors the
group's consumers read, computed lazily on the calibration batch and cached in the context so that
several criteria (or several groups reading one tensor) share one ONNX Runtime run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from deploysparse.errors import CalibrationError
from deploysparse.graph.queries import consumer_input as graph_consumer_input

if TYPE_CHECKING:
    from deploysparse.graph.groups import ChannelGroup, Member

ValuesFn = Callable[[list[str]], dict[str, np.ndarray]]


@dataclass
class CriterionContext:
    """Everything a criterion may read besides the group itself.

    ga: the GraphAnalysis (weights, nodes, shapes, the normalised model).
    calib: calibration feeds (input name -> array, batch first), or None when there is no data.
    rng: the one source of randomness (PFP's random variant), seeded by the caller for reproducibility.
    values_fn: computes intermediate tensors by name; defaults to ONNX Runtime on `ga.model` with the
        calibration feeds (`Backend.intermediates` of the reference backend). Tests and callers with their own
        runner inject it.
    """

    ga: Any
    calib: dict[str, np.ndarray] | None = None
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    values_fn: ValuesFn | None = None
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def has_data(self) -> bool:
        return self.calib is not None or self.values_fn is not None

    @property
    def num_points(self) -> int:
        """Calibration batch size (0 without data)."""
        if not self.calib:
            return 0
        return int(next(iter(self.calib.values())).shape[0])

    def prefetch(self, names: Iterable[str]) -> None:
        """Compute the named tensors in one run and cache them."""
        missing = sorted({n for n in names if n not in self._cache})
        if not missing:
            return
        if not self.has_data:
            raise CalibrationError(
                f"this criterion reads activations (tensor {missing[0]}): pass calibration data (--calib)"
            )
        runner = self.values_fn or self._run_reference
        values = runner(missing)
        for name in missing:
            if name not in values:
                raise CalibrationError(f"tensor {name} could not be computed on the calibration data")
            self._cache[name] = np.asarray(values[name])

    def activations(self, tensor_name: str) -> np.ndarray:
        """The tensor's value on the calibration batch, shape (N, C, ...)."""
        self.prefetch([tensor_name])
        return self._cache[tensor_name]

    def _run_reference(self, names: list[str]) -> dict[str, np.ndarray]:
        from deploysparse.backends import reference_backend

        return reference_backend().intermediates(self.ga.model, self.calib, names)


@runtime_checkable
class Criterion(Protocol):
    """The one signature every criterion implements (register one with
    deploysparse.criteria.register_criterion; docs/design.md walks through it).

    Optional extras a criterion may define (looked up with getattr by `plan_with`):
      merges(group, ctx, keep, dead) -> (keep, [(src, dst, factor)])  re-chooses the kept set, merges
      allocate(ga, ctx, budget, dead) -> Allocation with .scales        meets the Budget itself (PFP)
      dead(group, ctx) -> np.ndarray                    channels lossless to remove on the data
      check_model(groups, ga) -> None                   refuses a model the criterion cannot score
    """

    name: str
    needs_data: bool

    def score(self, group: ChannelGroup, ctx: CriterionContext) -> np.ndarray: ...


def normalise_by_mean(scores: np.ndarray) -> np.ndarray:
    """Scores divided by the group's mean score: 1.0 is the group's average channel.

    Raw filter norms are not comparable across layers (they scale with fan-in and initialisation), so
    a global ranking compares each channel with its own group: a threshold t removes, in every group,
    the channels weaker than t times that group's average. A group whose scores are all zero stays zero.
    """
    scores = np.asarray(scores, dtype=np.float64)
    mean = float(scores.mean()) if scores.size else 0.0
    if mean <= 0.0 or not np.isfinite(mean):
        return np.zeros_like(scores)
    return scores / mean


def channel_slices(weight: np.ndarray, member: Member) -> np.ndarray:
    """The member's slice of `weight` for every group channel, flattened: shape (group size, -1).

    A flatten consumer (width > 1) owns `width` consecutive entries per channel along the axis.
    """
    taken = np.take(weight, positions_of(member), axis=member.axis)
    taken = np.moveaxis(taken, member.axis, 0)
    return _absent_to_zero(taken.reshape(len(member.index), -1), member)


def positions_of(member: Member) -> np.ndarray:
    """Positions along the member's axis of every channel's `width` entries (absent channels: 0)."""
    return member.positions()


def _absent_to_zero(per_channel: np.ndarray, member: Member, axis: int = 0) -> np.ndarray:
    """Zero the rows of channels the member does not hold (index -1): they contribute nothing there."""
    absent = np.asarray(member.index) < 0
    if absent.any():
        per_channel = np.array(per_channel, copy=True)
        np.moveaxis(per_channel, axis, 0)[absent] = 0
    return per_channel


def weight_of(ga: Any, member: Member) -> np.ndarray:
    """The initializer a member names, as float64."""
    return np.asarray(ga.weights[member.name], dtype=np.float64)


def consumer_input(ga: Any, member: Member) -> tuple[str, int] | None:
    """The data tensor a consumer reads and the axis of its features, or None without a batch-first
    view (the graph layer decides: deploysparse.graph.queries.consumer_input)."""
    view = graph_consumer_input(ga, member)
    return None if view is None else (view.tensor, view.axis)


def channel_activations(values: np.ndarray, member: Member, axis: int) -> np.ndarray:
    """A consumer's input reorganised per group channel: shape (N, group size, width * rest).

    For a conv input (N, C, H, W) channel c is the plane index[c]; for a flattened Gemm input channel c
    owns the `width` features starting at index[c]; leading dims of a MatMul input count as points.
    """
    values = np.asarray(values)
    if axis == -1:
        values = values.reshape(-1, values.shape[-1])
    taken = np.take(values, positions_of(member), axis=1)
    return _absent_to_zero(taken.reshape(taken.shape[0], len(member.index), -1), member, axis=1)
