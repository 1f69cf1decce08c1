"""Intermediate activations from ONNX Runtime (OnnxRuntimeBackend.intermediate_batches).

The bare-ONNX route to the data a criterion or the dead-filter check needs: the chosen intermediate
tensors are exposed as extra graph outputs and the calibration data is run through in batches, on
the CPU provider with graph optimisations off, so every tensor of the model as it is can be read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx

from deploysparse.backends.onnxruntime.runtime import load_onnxruntime
from deploysparse.errors import BackendError
from deploysparse.modelio import detached_weights, needs_external_data, point_to_external


def session(model: onnx.ModelProto, extra_outputs: Sequence[str] = ()):
    """An ONNX Runtime CPU session on `model` with `extra_outputs` exposed."""
    ort = load_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    # Over protobuf's 2 GB limit the model cannot be handed over as one message: its large weights
    # go to ONNX Runtime as arrays beside the graph (no copy), the graph alone as the message.
    with detached_weights(model, detach=needs_external_data(model)) as (exposed, weights):
        present = {o.name for o in exposed.graph.output}
        for name in extra_outputs:
            if name not in present:
                exposed.graph.output.append(onnx.ValueInfoProto(name=name))
                present.add(name)
        arrays = []
        for tensor, data in weights:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            arrays.append(np.frombuffer(data, dtype=dtype).reshape(tuple(tensor.dims)))
            # ONNX Runtime takes these values from add_external_initializers, not from the file named
            point_to_external(tensor, "supplied-by-deploysparse", 0, len(data))
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
        if weights:
            options.add_external_initializers([t.name for t, _ in weights], values)
        sess = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    sess.supplied_initializers = (arrays, values)  # ONNX Runtime reads them for the session's lifetime
    return sess


def static_batch(sess) -> int | None:
    """The batch size a model was exported with when its batch dimension is not dynamic."""
    dims = [inp.shape[0] for inp in sess.get_inputs() if inp.shape]
    fixed = [d for d in dims if isinstance(d, int) and d > 0]
    return fixed[0] if fixed else None


def intermediate_batches(
    model: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    names: Sequence[str] | None = None,
    batch_size: int = 32,
) -> Iterator[dict[str, np.ndarray]]:
    """Run `feeds` through `model` in batches; yield the tensors `names` (the graph outputs when
    None) of each batch.

    A model with a fixed batch size gets batches of exactly that size; the last partial batch is
    padded by repeating samples and the padding dropped from the results.
    """
    sess = session(model, names or ())
    output_names = list(names) if names is not None else [o.name for o in sess.get_outputs()]
    count = next(iter(feeds.values())).shape[0]
    fixed = static_batch(sess)
    step = fixed or batch_size
    for start in range(0, count, step):
        batch = {k: v[start : start + step] for k, v in feeds.items()}
        real = next(iter(batch.values())).shape[0]
        if fixed and real < fixed:
            batch = {k: np.resize(v, (fixed, *v.shape[1:])) for k, v in batch.items()}
        try:
            results = sess.run(output_names, batch)
        except Exception as exc:  # ORT reports shape and type mismatches as several exception types
            raise BackendError(f"ONNX Runtime could not run the model on this data: {exc}") from exc
        yield {name: value[:real] for name, value in zip(output_names, results, strict=True)}
