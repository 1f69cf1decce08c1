"""Random model inputs, for any model: the one place that decides what data a model is fed when the
user gave none (benchmarks, latency tables, denormal timing, per-layer profiles, dead-filter checks,
shape completion, the torch front end's agreement check).

What is fed, per input dtype: floats are standard normal (or uniform in `value_range`), integers are
1 to 9 (or the integers in `value_range`), booleans a fair coin. Never zeros: some kernels take a
short cut on zeros, and a dead-filter check on zero data would prove nothing.

Which shape: an explicit shape per input wins (a model with dynamic height and width is fed at the
size given, e.g. by --input-shape); otherwise the declared dims, which must then be static past the
batch. The batch dim is `batch` when given (a static batch that differs is refused, naming the input), else
the explicit or declared one, and at least `min_batch` (intermediates run a static-batch model on
more samples batch by batch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from deploysparse.calibration import InputSpec, model_input_specs
from deploysparse.errors import UsageError

ValueRange = tuple[float, float]


def feed_shapes(
    specs: Sequence[InputSpec] | onnx.ModelProto,
    shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    batch: int | None = None,
    min_batch: int = 1,
    source: str = "the model",
) -> dict[str, tuple[int, ...]]:
    """The concrete shape each input is fed at (module doc); UsageError naming `source` and the input
    when a shape cannot be settled. Cheap: callers check every batch size before running any."""
    specs = model_input_specs(specs) if isinstance(specs, onnx.ModelProto) else list(specs)
    shapes = dict(shapes or {})
    known = {spec.name for spec in specs}
    unknown = [name for name in shapes if name not in known]
    if unknown:
        raise UsageError(
            f"{source}: a shape is given for input '{unknown[0]}', but the inputs are {', '.join(known) or 'none'}"
        )
    return {spec.name: _shape(spec, shapes.get(spec.name), batch, min_batch, source) for spec in specs}


def make_feeds(
    specs: Sequence[InputSpec] | onnx.ModelProto,
    shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    batch: int | None = None,
    min_batch: int = 1,
    value_range: ValueRange | None = None,
    seed: int | np.random.Generator = 0,
    source: str = "the model",
) -> dict[str, np.ndarray]:
    """Random inputs for `specs` (or a model's inputs), input name -> array, drawn in input order from
    `seed` (a Generator is drawn from as it stands, so successive calls give fresh data)."""
    specs = model_input_specs(specs) if isinstance(specs, onnx.ModelProto) else list(specs)
    resolved = feed_shapes(specs, shapes, batch=batch, min_batch=min_batch, source=source)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return {spec.name: _values(spec, resolved[spec.name], value_range, rng, source) for spec in specs}


def _shape(
    spec: InputSpec, given: Sequence[int] | None, batch: int | None, min_batch: int, source: str
) -> tuple[int, ...]:
    if not spec.shape:
        return ()  # a scalar input
    if given is not None:
        dims = [int(d) for d in given]
        if len(dims) != len(spec.shape) or any(
            isinstance(want, int) and want != got for want, got in zip(spec.shape[1:], dims[1:], strict=True)
        ):
            raise UsageError(
                f"{source}: shape {'x'.join(map(str, dims))} does not fit input '{spec.name}' {spec.shape_text()}"
            )
    else:
        dynamic = [i for i, d in enumerate(spec.shape[1:], start=1) if not isinstance(d, int)]
        if dynamic:
            raise UsageError(
                f"{source}: input '{spec.name}' has dynamic dims at axes {dynamic} {spec.shape_text()}; "
                "give its shape to run it"
            )
        dims = [spec.batch_dim if isinstance(spec.batch_dim, int) else 1, *(int(d) for d in spec.shape[1:])]
    if batch is not None:
        if isinstance(spec.batch_dim, int) and spec.batch_dim != batch:
            raise UsageError(
                f"{source}: input '{spec.name}' has a static batch of {spec.batch_dim}, so batch {batch} cannot "
                f"run; export the model with a dynamic batch axis or use batch {spec.batch_dim}"
            )
        dims[0] = batch
    dims[0] = max(dims[0], min_batch)
    if any(d < 1 for d in dims):
        raise UsageError(f"{source}: input '{spec.name}' cannot be fed at shape {dims}")
    return tuple(dims)


def _values(
    spec: InputSpec,
    shape: tuple[int, ...],
    value_range: ValueRange | None,
    rng: np.random.Generator,
    source: str,
) -> np.ndarray:
    kind = spec.dtype.kind
    if kind == "f":
        if value_range is None:
            return rng.standard_normal(shape).astype(spec.dtype)
        return rng.uniform(value_range[0], value_range[1], shape).astype(spec.dtype)
    if kind in "iu":
        low, high = (
            (1, 9) if value_range is None else (int(np.ceil(value_range[0])), int(np.floor(value_range[1])))
        )
        if low > high:
            raise UsageError(f"{source}: value range {value_range} holds no integer for input '{spec.name}'")
        return rng.integers(low, high, size=shape, endpoint=True).astype(spec.dtype)
    if kind == "b":
        return rng.random(shape) < 0.5
    raise UsageError(f"{source}: input '{spec.name}' of type {spec.dtype} cannot be given random values")
