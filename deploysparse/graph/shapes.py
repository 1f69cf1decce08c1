"""Static tensor shapes for the analysis.

Channel analysis needs the channel count of every activation and the spatial size behind a flatten.
Dynamic dimensions are fixed for the analysis only, at the run's shapes (`deploysparse.run_shapes`:
--input-shape, else the calibration data's shape, else the model's static dims with a dynamic batch of
1); the compact model keeps the original's dynamic dimensions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from deploysparse.errors import ModelLoadError


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
