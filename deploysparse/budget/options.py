"""The budget's options, declared once: `Budget`, one field per option, with what each means.

Every field carries an `Option` in its metadata: the help text, whether it is one of the targets
(at most one of --ratio, --flops-target, --latency-target), its valid range or choices, and whether
a recipe sets it from its build section. The CLI's options (cli/options.py), a recipe's `prune:`
keys (recipe.py) and a sweep's budget axes (sweep/config.py) are derived from these fields, so a new
field is one edit here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from deploysparse.errors import UsageError

DEAD = "dead"  # the --criterion that removes only the dead filters: no ranking, no target
# Kept counts are rounded to multiples of 16 unless told otherwise. ONNX Runtime's blocked (NCHWc) CPU
# convs work on blocks of 16 channels on AVX-512 machines (8 on AVX2) and pad every other count up to
# the next block; FP16 tensor cores want multiples of 8 and Arm's NEON kernels 4. 16 serves all of
# them with one plan on every machine: measured, MobileNetV2 at 50% FLOPs ran 1.70x faster than the
# original with multiples of 8 and 2.07x with 16 (docs/benchmarks.md). `round_to=1` turns it off;
# INT8 engines want 32 (the recipes say so).
DEFAULT_ROUND_TO = 16
# No group loses more than 90% of its channels unless told otherwise. A global ranking compares
# channels across layers by normalised scores, and a stage whose filters all score low (a wide trunk,
# an SE bottleneck) can be emptied whole: on RegNetY-400MF at --ratio 0.3, 28% of the channels
# removed took 91% of the parameters, four stages cut to 8 channels. The recipes always set 0.9; a
# plan that wants a stage gone says where (`capped`), and --max-layer-ratio 1 lifts the cap.
DEFAULT_MAX_LAYER_RATIO = 0.9
# How a --latency-target picks where to cut (deploysparse.budget.latency). The threshold is the
# default: at equal predicted latency it kept more accuracy than the knapsack on digits-trained
# MobileNetV2 and ResNet-50 (docs/benchmarks.md), because the knapsack treats group-normalised scores
# as absolute.
LATENCY_ALLOCATIONS = ("threshold", "knapsack")


@dataclass(frozen=True)
class Interval:
    """The values a number may take: from `low` to `high` (None: unbounded), each end included or
    not. One object answers the Budget's own check, its error text and a recipe's schema bound."""

    low: float | None = None
    high: float | None = None
    low_included: bool = True
    high_included: bool = True

    def __contains__(self, value: float) -> bool:
        if self.low is not None and not (value >= self.low if self.low_included else value > self.low):
            return False
        return self.high is None or (value <= self.high if self.high_included else value < self.high)

    def describe(self) -> str:
        if self.high is None:
            return f"must be at least {self.low:g}" if self.low_included else f"must be above {self.low:g}"
        left, right = "[" if self.low_included else "(", "]" if self.high_included else ")"
        return f"must be in {left}{self.low:g}, {self.high:g}{right}"

    def bounds(self) -> dict[str, float]:
        """The interval as pydantic's Field constraints (ge/gt, le/lt)."""
        out: dict[str, float] = {}
        if self.low is not None:
            out["ge" if self.low_included else "gt"] = self.low
        if self.high is not None:
            out["le" if self.high_included else "lt"] = self.high
        return out


FRACTION_TO_REMOVE = Interval(0.0, 1.0, high_included=False)  # [0, 1): removing all is no model
FRACTION_TO_KEEP = Interval(0.0, 1.0, low_included=False)  # (0, 1]: keeping nothing is no model
AT_LEAST_ONE = Interval(1)


@dataclass(frozen=True)
class Option:
    """What the CLI, recipes and sweeps need of a Budget field besides its name, type and default.

    help: the --option's help text. target: one of the targets, of which a budget takes at most one
    (a sweep varies them as its budget axis). interval, choices: the values allowed, checked by
    Budget and by a recipe's schema. from_build: a recipe sets it from its build section (where a
    latency target is measured: the build's backend and optimal batch), not from `prune:`.
    """

    help: str
    target: bool = False
    interval: Interval | None = None
    choices: tuple[str, ...] = ()
    from_build: bool = False

    def check(self, name: str, value: Any) -> None:
        """UsageError naming the option when `value` (not None) lies outside what it allows."""
        if self.interval is not None and value not in self.interval:
            raise UsageError(f"{flag(name)} {value}: {self.interval.describe()}")
        if self.choices and value not in self.choices:
            raise UsageError(f"{flag(name)} {value}: one of {', '.join(self.choices)}")


def budget_field(default: Any, help: str, **option: Any) -> Any:
    """A Budget field with its Option (the keywords of Option besides `help`)."""
    return field(default=default, metadata={"option": Option(help, **option)})


@dataclass(frozen=True)
class Budget:
    """How much a plan removes and under which limits; the one place these options and their defaults
    live (the CLI, the API, recipes, sweeps and every criterion take a Budget).

    ratio: fraction of the model's channels to remove (of its filters' channels, less the model's own
    inputs and outputs, protected groups and dead channels; channels an op pins count, see
    deploysparse.budget.outcome). flops_target: fraction of the original MACs to keep.
    latency_target: fraction of the original latency to keep, on `backend` at `batch`
    (deploysparse.budget.latency). At most one of the three; with none only dead channels go.
    latency_allocation: how a latency target chooses where to cut: "threshold" (the global score
    threshold that --flops-target uses, walked by predicted latency) or "knapsack" (HALP's: the most
    importance per millisecond; it lost accuracy with group-normalised scores, docs/criteria.md).
    max_layer_ratio: no group loses more than this fraction of its live channels, 0.9 by default
    (dead channels go regardless; 1: no cap).
    min_channels: no group keeps fewer. round_to: kept counts are multiples of it, 16 by default
    (see legal_counts for groups that are smaller or not a multiple by design).
    protect: group ids or producer node names left whole.
    """

    ratio: float | None = budget_field(
        None, "Remove this fraction of the prunable channels.", target=True, interval=FRACTION_TO_REMOVE
    )
    flops_target: float | None = budget_field(
        None, "Keep this fraction of the FLOPs (MACs).", target=True, interval=FRACTION_TO_KEEP
    )
    latency_target: float | None = budget_field(
        None,
        "Keep this fraction of the latency measured on --backend at --batch (per-layer tables, cached).",
        target=True,
        interval=FRACTION_TO_KEEP,
    )
    backend: str = budget_field("onnxruntime", "Where --latency-target is measured.", from_build=True)
    batch: int = budget_field(
        1, "Batch size --latency-target is measured at.", interval=AT_LEAST_ONE, from_build=True
    )
    latency_allocation: str = budget_field(
        "threshold",
        "How --latency-target picks where to cut: the global score threshold (as --flops-target) walked "
        "by predicted latency, or HALP's knapsack (most importance per millisecond).",
        choices=LATENCY_ALLOCATIONS,
    )
    max_layer_ratio: float = budget_field(
        DEFAULT_MAX_LAYER_RATIO,
        "Remove at most this fraction of any one group (dead channels aside; 1 lifts the cap).",
        interval=Interval(0.0, 1.0),
    )
    min_channels: int = budget_field(1, "Keep at least this many per group.", interval=AT_LEAST_ONE)
    round_to: int = budget_field(
        DEFAULT_ROUND_TO,
        "Keep channel counts a multiple of N (default 16: what blocked CPU kernels and tensor cores want; "
        "1 turns it off).",
        interval=AT_LEAST_ONE,
    )
    protect: tuple[str, ...] = budget_field((), "Group id or producer node name to leave alone (repeatable).")

    def __post_init__(self) -> None:
        object.__setattr__(self, "protect", tuple(self.protect))
        given = self.targets_given()
        if len(given) > 1:
            raise UsageError(
                f"give either {given[0]} or {given[1]}, not both (one of "
                f"{', '.join(flag(name) for name in TARGETS)})"
            )
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                f.metadata["option"].check(f.name, value)

    @classmethod
    def of(cls, budget: Budget | None = None, **fields: Any) -> Budget:
        """`budget` with `fields` replaced (None values ignored); UsageError naming an unknown field."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise UsageError(f"unknown budget option {unknown[0]!r}; known: {', '.join(sorted(known))}")
        given = {k: v for k, v in fields.items() if v is not None}
        return dataclasses.replace(budget or cls(), **given)

    def targets_given(self) -> list[str]:
        """The names of the targets this budget sets (at most one once it is built)."""
        return [name for name in TARGETS if getattr(self, name) is not None]

    @property
    def targeted(self) -> bool:
        """Whether the budget asks for more than the dead channels (a ratio, FLOPs or latency target)."""
        return bool(self.targets_given())

    @property
    def limits(self) -> tuple[float | None, int, int]:
        """(max_layer_ratio, min_channels, round_to): what shapes each group's legal counts."""
        return self.max_layer_ratio, self.min_channels, self.round_to


def option_fields() -> Iterator[tuple[dataclasses.Field, Option]]:
    """Every Budget field with its Option, in declaration order."""
    for f in dataclasses.fields(Budget):
        yield f, option_of(f.name)


def option_of(name: str) -> Option:
    """The Option of Budget field `name`."""
    return Budget.__dataclass_fields__[name].metadata["option"]


def value_type(name: str) -> type:
    """What a Budget field holds besides None: float, int, str or tuple (read from its annotation)."""
    hint = typing.get_type_hints(Budget)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.get_origin(hint) or hint


def flag(name: str) -> str:
    """The CLI option of a Budget field: flops_target -> --flops-target."""
    return "--" + name.replace("_", "-")


TARGETS: tuple[str, ...] = tuple(f.name for f, option in option_fields() if option.target)


def describe_targets(budget: Budget) -> str:
    """The targets a budget sets, as the user gave them: `--ratio 0.3`."""
    return ", ".join(f"{flag(name)} {getattr(budget, name):g}" for name in budget.targets_given())
