"""Bring the many shapes of real ONNX files to one the analysis can read.

Converters put weights in `Constant` nodes (Paddle, TensorFlow) and torch's dynamo exporter with
`optimize=False` computes a conv's zero bias at run time (Shape -> Expand of a constant). After
`normalize`, every tensor that does not depend on a graph input is an initializer, so a rule can ask
"is this input a constant?" in one place. Tensor and node names are kept; the caller's model is not
modified.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from deploysparse.errors import ModelLoadError
from deploysparse.graph.rules import attr, readers
from deploysparse.graph.shapes import skeleton

# Ops whose output differs between runs or that have side effects: never folded.
_NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}


def _default_opset(model: onnx.ModelProto) -> dict[str, int]:
    return {imp.domain: imp.version for imp in model.opset_import}


def normalize(model: onnx.ModelProto, copy: bool = True) -> onnx.ModelProto:
    """Constant nodes and constant sub-graphs turned into initializers, node names filled in (every
    node gets a unique name so plans and messages can refer to it). Works on a copy unless
    `copy=False` (the caller owns the model and saves the memory of a second one)."""
    if copy:
        duplicate = onnx.ModelProto()
        duplicate.CopyFrom(model)
        model = duplicate
    graph = model.graph
    if any(n.op_type == "If" or n.op_type == "Loop" or n.op_type == "Scan" for n in graph.node):
        raise ModelLoadError(
            "the graph has control flow (If/Loop/Scan); deploysparse prunes feed-forward CNN graphs only"
        )
    _name_nodes(graph)
    _drop_initializer_inputs(graph)
    values: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    opsets = _default_opset(model)
    elem_types, partial_shapes = _type_info(model)
    kept_nodes: list[onnx.NodeProto] = []
    new_constants: dict[str, np.ndarray] = {}
    for node in graph.node:
        if _cast_like_of_constant(node, values, elem_types):
            target = onnx.helper.tensor_dtype_to_np_dtype(elem_types[node.input[1]])
            values[node.output[0]] = new_constants[node.output[0]] = values[node.input[0]].astype(target)
            continue
        if _foldable(node, values):
            outputs = _evaluate(node, values, opsets)
            if outputs is not None:
                for name, value in zip(node.output, outputs, strict=False):
                    if name:
                        values[name] = value
                        new_constants[name] = value
                continue
        kept_nodes.append(node)
    kept_nodes = _split_sequences(
        kept_nodes, values, partial_shapes, opsets.get("", opsets.get("ai.onnx", 13)), new_constants
    )
    _drop_zero_biases(kept_nodes, new_constants)
    del graph.node[:]
    graph.node.extend(kept_nodes)
    _add_used_constants(graph, new_constants)
    return model


def _drop_zero_biases(nodes: list[onnx.NodeProto], computed: dict[str, np.ndarray]) -> None:
    """A bias the exporter computed as zeros (dynamo's Expand of 0) is dropped: the same conv
    without it, and a smaller file than an explicit zero vector."""
    for node in nodes:
        computed_bias = len(node.input) == 3 and node.input[2] in computed
        if (
            node.op_type in ("Conv", "ConvTranspose")
            and computed_bias
            and not np.any(computed[node.input[2]])
        ):
            del node.input[2]


def _split_sequences(
    nodes: list[onnx.NodeProto],
    values: dict[str, np.ndarray],
    shapes: dict[str, list[int]],
    opset: int,
    new_constants: dict[str, np.ndarray],
) -> list[onnx.NodeProto]:
    """SplitToSequence read only by SequenceAt at constant positions (dynamo's torch.chunk without
    optimisation) is a plain Split: rewrite it so the channel rules see one."""
    reading = readers(nodes)
    replaced: set[str] = set()
    out: list[onnx.NodeProto] = []
    for node in nodes:
        if node.name in replaced:
            continue
        split = _as_split(node, reading, values, shapes, opset, new_constants)
        if split is None:
            out.append(node)
            continue
        out.append(split)
        replaced.update(r.name for r in reading[node.output[0]])
    return out


def _as_split(node, reading, values, shapes, opset, new_constants) -> onnx.NodeProto | None:
    if node.op_type != "SplitToSequence" or len(node.input) < 2 or node.input[1] not in values:
        return None
    axis = int(attr(node, "axis", 0))
    sizes = np.asarray(values[node.input[1]])
    if sizes.ndim == 0:  # a chunk size: the last chunk takes the remainder
        shape = shapes.get(node.input[0])
        if not shape or shape[axis] <= 0:
            return None
        total, chunk = shape[axis], int(sizes)
        sizes = np.array(
            [chunk] * (total // chunk) + ([total % chunk] if total % chunk else []), dtype=np.int64
        )
    sizes = sizes.reshape(-1).astype(np.int64)
    keepdims = int(attr(node, "keepdims", 1))
    users = reading.get(node.output[0], [])
    if sizes.ndim != 1 or len(sizes) < 1 or not keepdims or not users:
        return None
    positions: dict[int, str] = {}
    for user in users:
        if user.op_type != "SequenceAt" or user.input[1] not in values:
            return None
        index = int(np.asarray(values[user.input[1]]).reshape(-1)[0]) % len(sizes)
        if index in positions:
            return None
        positions[index] = user.output[0]
    outputs = [positions.get(i, f"{node.name}_unused_{i}") for i in range(len(sizes))]
    if opset < 13:
        return onnx.helper.make_node(
            "Split", [node.input[0]], outputs, name=node.name, axis=axis, split=[int(v) for v in sizes]
        )
    sizes_name = f"{node.name}_sizes"
    values[sizes_name] = new_constants[sizes_name] = sizes
    return onnx.helper.make_node("Split", [node.input[0], sizes_name], outputs, name=node.name, axis=axis)


def _type_info(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Element type and (partly known, -1) shape of every tensor that inference can type."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model))
    except Exception:  # types are a convenience here; without them CastLike stays a node
        inferred = model
    graph = inferred.graph
    infos = [*graph.input, *graph.value_info, *graph.output]
    types = {vi.name: vi.type.tensor_type.elem_type for vi in infos if vi.type.tensor_type.elem_type}
    shapes = {
        vi.name: [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        for vi in infos
        if vi.type.tensor_type.HasField("shape")
    }
    return types, shapes


def _cast_like_of_constant(
    node: onnx.NodeProto, values: dict[str, np.ndarray], types: dict[str, int]
) -> bool:
    """CastLike(constant, activation) depends only on the activation's type (dynamo writes a conv's
    zero bias this way)."""
    return (
        node.op_type == "CastLike"
        and node.input[0] in values
        and node.input[1] not in values
        and node.input[1] in types
    )


def _name_nodes(graph: onnx.GraphProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def _drop_initializer_inputs(graph: onnx.GraphProto) -> None:
    """Old exporters list initializers as graph inputs too; treat them as constants."""
    init_names = {init.name for init in graph.initializer}
    keep = [inp for inp in graph.input if inp.name not in init_names]
    del graph.input[:]
    graph.input.extend(keep)


def _foldable(node: onnx.NodeProto, values: dict[str, np.ndarray]) -> bool:
    if node.op_type in _NOT_FOLDABLE or node.domain not in ("", "ai.onnx"):
        return False
    return all((not name) or name in values for name in node.input)


def _evaluate(
    node: onnx.NodeProto, values: dict[str, np.ndarray], opsets: dict[str, int]
) -> list[np.ndarray] | None:
    if node.op_type == "Constant":
        attr = node.attribute[0]
        if attr.name == "value":
            return [numpy_helper.to_array(attr.t)]
    from onnx.reference import ReferenceEvaluator  # only when a node is folded: 50 ms to import

    try:
        evaluator = ReferenceEvaluator(node, opsets=opsets)
        feeds = {name: values[name] for name in node.input if name}
        results = evaluator.run(None, feeds)
    except Exception:  # an op the reference evaluator lacks stays a node; nothing is lost
        return None
    return [np.asarray(r) for r in results]


def _add_used_constants(graph: onnx.GraphProto, new_constants: dict[str, np.ndarray]) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for name, value in new_constants.items():
        if name in used:
            graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    # Initializers nobody reads any more (inputs of folded nodes) are dropped, in place: rebuilding
    # the list would copy every weight.
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:
            del graph.initializer[i]
