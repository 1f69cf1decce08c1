"""Static tensor shapes for the analysis.

Channel analysis needs the channel count of every activation and the spatial size behind a flatten.
Dynamic dimensions are fixed for the analysis only (batch -> 1, or the calibration data's shape); the
compact model keeps the original's dynamic dimensions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from deploysparse.errors import ModelLoadError, UsageError


def declared_input_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """The graph inputs' shapes as declared: ints, symbolic names, or None for unknown."""
    shapes: dict[str, list[int | str | None]] = {}
    for inp in model.graph.input:
        dims: list[int | str | None] = []
        for d in inp.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shapes[inp.name] = dims
    return shapes


def resolve_input_shapes(
    model: onnx.ModelProto, given: Mapping[str, Sequence[int]] | None = None
) -> dict[str, list[int]]:
    """Concrete input shapes: `given` where provided, else declared dims with a dynamic batch -> 1.

    A dynamic dimension other than the batch cannot be guessed: the error asks for --input-shape or
    calibration data.
    """
    given = dict(given or {})
    resolved: dict[str, list[int]] = {}
    for name, dims in declared_input_shapes(model).items():
        if name in given:
            shape = [int(d) for d in given[name]]
            if len(shape) != len(dims):
                raise UsageError(
                    f"input {name!r}: shape {tuple(shape)} has {len(shape)} dims, the model declares "
                    f"{_fmt(dims)}"
                )
            for i, (want, have) in enumerate(zip(dims, shape, strict=True)):
                if isinstance(want, int) and want > 0 and want != have and i > 0:
                    raise UsageError(
                        f"input {name!r}: shape {tuple(shape)} does not match the model's {_fmt(dims)}"
                    )
            resolved[name] = shape
            continue
        shape = []
        for i, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif i == 0:
                shape.append(1)
            else:
                raise UsageError(
                    f"input {name!r} has a dynamic dimension {i} ({_fmt(dims)}); give --input-shape or "
                    "calibration data so the analysis knows the shape"
                )
        resolved[name] = shape
    return resolved


def _fmt(dims: Sequence[int | str | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def infer_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape with the inputs fixed to `input_shapes` (unknown dims are -1)."""
    fixed = skeleton(model)
    for inp in fixed.graph.input:
        if inp.name in input_shapes:
            shape = inp.type.tensor_type.shape
            del shape.dim[:]
            for d in input_shapes[inp.name]:
                shape.dim.add().dim_value = int(d)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception as exc:  # onnx raises several types here; all mean the graph is inconsistent
        raise ModelLoadError(f"shape inference failed: {exc}") from exc
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


_SMALL = 1024  # elements: shape constants and the like stay values; weights become typed inputs


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph without its large weights (declared as typed inputs instead), for shape and type
    inference: serialising a 100 MB model twice for inference would cost more than the analysis."""
    graph = model.graph
    small = [init for init in graph.initializer if np.prod(init.dims) <= _SMALL]
    large = [init for init in graph.initializer if np.prod(init.dims) > _SMALL]
    out = onnx.ModelProto(
        ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions
    )
    out.graph.name = graph.name
    out.graph.node.extend(graph.node)
    out.graph.input.extend(graph.input)
    out.graph.output.extend(graph.output)
    out.graph.initializer.extend(small)
    for init in large:
        out.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return out
