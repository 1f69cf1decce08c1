"""The shapes a run feeds a model at, and the batch sizes it can take: decided here, once, for every
command that runs a model (analyze, prune, bench, build, validate, run, sweep points).

Real exports declare dynamic dims: PaddleOCR's text detector takes (?, 3, ?, ?), its recogniser
(?, 3, 48, ?). Such a model has no shape of its own, so the shape comes from, in this order:
1. `--input-shape` (every form `input_shapes` parses) or a recipe's `input_shape:` (a run's option wins);
2. the calibration or validation data: one sample's shape (axis 0 is the sample axis);
3. the model's own dims, when they are static past the batch (a dynamic batch is 1).
`RunShapes.source` says which, and reports print it beside the shape.

Batch sizes: a recipe or `bench --batch` says which batches it would like; a model exported with a
static batch (PicoDet's (1, 3, 800, 608)) can run only that one. `RunShapes.usable_batches` keeps
what the model takes and names each batch it skips, so a run reports what it skipped instead of
failing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from deploysparse.calibration import InputSpec, model_input_specs
from deploysparse.errors import UsageError

GIVEN = "--input-shape"
DATA = "data"
MODEL = "model"


@dataclass(frozen=True)
class RunShapes:
    """input name -> the shape it is fed at (at the run's batch: the given one, else the model's
    static batch, else 1), and where the shapes came from ("--input-shape", "recipe", "data", "model")."""

    shapes: dict[str, tuple[int, ...]]
    source: str
    static_batch: tuple[str, int] | None = None  # (input, size) when the model's batch dim is fixed

    def usable_batches(self, wanted: Sequence[int]) -> tuple[list[int], list[SkippedBatch]]:
        """The batch sizes of `wanted` the model takes, in order, and the ones it cannot (a static
        batch dim runs that batch only). When none of `wanted` fits, the model's own static batch is
        kept instead: a run always measures something."""
        wanted = list(dict.fromkeys(wanted))
        if self.static_batch is None:
            return wanted, []
        name, size = self.static_batch
        kept = [b for b in wanted if b == size]
        skipped = [
            SkippedBatch(b, f"input '{name}' has a static batch of {size}") for b in wanted if b != size
        ]
        return (kept or [size]), skipped

    def at_batch(self, batch: int) -> dict[str, tuple[int, ...]]:
        """The shapes with the batch dim set to `batch` (scalar inputs as they are)."""
        return {name: (batch, *dims[1:]) if dims else dims for name, dims in self.shapes.items()}

    @property
    def batch(self) -> int:
        """The batch of the shapes (of the first input that has one)."""
        return next((dims[0] for dims in self.shapes.values() if dims), 1)

    def describe(self) -> str:
        """`x 1x3x640x640 (from --input-shape)`: one line for a report or a terminal."""
        shown = ", ".join(f"{name} {'x'.join(map(str, dims))}" for name, dims in self.shapes.items())
        return f"{shown} (from {self.source})"

    def to_json(self) -> dict:
        return {"shapes": {name: list(dims) for name, dims in self.shapes.items()}, "source": self.source}


@dataclass(frozen=True)
class SkippedBatch:
    """A batch size asked for that the model cannot take, and why."""

    batch: int
    reason: str

    def to_json(self) -> dict:
        return {"batch": self.batch, "reason": self.reason}


def resolve_shapes(
    model: onnx.ModelProto | Sequence[InputSpec],
    given: Mapping[str, Sequence[int]] | None = None,
    data: Mapping[str, np.ndarray] | None = None,
    *,
    given_as: str = GIVEN,
) -> RunShapes:
    """The shapes a run feeds `model` at (module doc for the order). `given` maps input names to
    shapes (the name "" means the only input), as `input_shapes.parse_input_shapes` returns them;
    `given_as` is what to call it in messages and in `source` (a recipe's `input_shape`).

    UsageError naming the input when a given shape does not fit the model (unknown name, another
    rank, a static dim or a static batch that differs), or when an input has dynamic dims past the
    batch that nothing gives."""
    specs = model_input_specs(model) if isinstance(model, onnx.ModelProto) else list(model)
    by_name = {spec.name: spec for spec in specs}
    named = _named(dict(given or {}), by_name, given_as)
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        if spec.name in named:
            shapes[spec.name] = _fit(spec, named[spec.name], given_as)
        elif data is not None and spec.name in data:
            shapes[spec.name] = _fit(spec, (_batch_of(spec), *np.shape(data[spec.name])[1:]), "the data")
        else:
            shapes[spec.name] = _declared(spec, given_as)
    source = given_as if named else DATA if data is not None else MODEL
    static = next(((s.name, s.batch_dim) for s in specs if s.shape and isinstance(s.batch_dim, int)), None)
    return RunShapes(shapes, source, static)


def shapes_if_known(
    model: onnx.ModelProto | Sequence[InputSpec], given: Mapping[str, Sequence[int]] | None = None
) -> RunShapes | None:
    """`resolve_shapes(model, given)`, or None when the model has dynamic dims past the batch and
    nothing gives them: for the commands that can work without a shape (an ONNX Runtime build keeps
    the model's dynamic dims)."""
    specs = model_input_specs(model) if isinstance(model, onnx.ModelProto) else list(model)
    if not given and any(not isinstance(d, int) for spec in specs for d in spec.shape[1:]):
        return None
    return resolve_shapes(specs, given)


def _named(
    given: dict[str, Sequence[int]], by_name: Mapping[str, InputSpec], given_as: str
) -> dict[str, tuple[int, ...]]:
    """`given` keyed by real input names: "" becomes the only input's name; an unknown name is refused."""
    if "" in given:
        if len(by_name) != 1:
            raise UsageError(
                f"{given_as} without an input name, but the model has inputs {', '.join(by_name)}; "
                "write NAME:1,3,32,32"
            )
        given[next(iter(by_name))] = given.pop("")
    for name in given:
        if name not in by_name:
            raise UsageError(
                f"{given_as} names '{name}', but the model's inputs are {', '.join(by_name) or 'none'}"
            )
    return {name: tuple(int(d) for d in dims) for name, dims in given.items()}


def _fit(spec: InputSpec, dims: Sequence[int], given_as: str) -> tuple[int, ...]:
    """`dims` if it fits `spec`: its rank, its static dims (the batch included)."""
    dims = tuple(int(d) for d in dims)
    shown = "x".join(map(str, dims))
    if len(dims) != len(spec.shape):
        raise UsageError(
            f"{given_as}: {shown} has {len(dims)} dims, but input '{spec.name}' has rank {len(spec.shape)} "
            f"{spec.shape_text()}"
        )
    if any(d < 1 for d in dims):
        raise UsageError(f"{given_as}: {shown} has a size below 1 for input '{spec.name}'")
    wrong = [
        i
        for i, (want, got) in enumerate(zip(spec.shape, dims, strict=True))
        if isinstance(want, int) and want != got
    ]
    if wrong == [0]:
        raise UsageError(
            f"{given_as}: {shown} has batch {dims[0]}, but input '{spec.name}' has a static batch of "
            f"{spec.batch_dim} {spec.shape_text()}"
        )
    if wrong:
        raise UsageError(f"{given_as}: {shown} does not fit input '{spec.name}' {spec.shape_text()}")
    return dims


def _declared(spec: InputSpec, given_as: str) -> tuple[int, ...]:
    """The model's own dims (a dynamic batch is 1); UsageError when a dim past the batch is dynamic."""
    dynamic = [i for i, d in enumerate(spec.shape[1:], start=1) if not isinstance(d, int)]
    if dynamic:
        example = "x".join(str(d) if isinstance(d, int) else "?" for d in (_batch_of(spec), *spec.shape[1:]))
        raise UsageError(
            f"input '{spec.name}' has dynamic dims at axes {dynamic} {spec.shape_text()}: give the shape to "
            f"run it at, {given_as} {spec.name}:{example} with a size for each ?, or data of that shape"
        )
    return tuple(int(d) for d in (_batch_of(spec), *spec.shape[1:])) if spec.shape else ()


def _batch_of(spec: InputSpec) -> int:
    return spec.batch_dim if isinstance(spec.batch_dim, int) else 1
