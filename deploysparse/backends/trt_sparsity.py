"""2:4 structured sparsity for the sparse tensor cores of Ampere and later GPUs (`--sparsity 2:4`).

A sparse tensor core skips half of a GEMM's multiplies when, along the reduction axis, every group of
4 consecutive weights holds at most 2 non-zeros. TensorRT uses such kernels only where the weights
already follow the pattern (`--sparsity=enable`, the builder's SPARSE_WEIGHTS flag), and only where
it times them faster than dense ones. Filter pruning made the model narrower; this makes the
remaining layers half-dense, on the compact model.

Which layers are made sparse: dense (group 1) convolutions and GEMMs (Gemm, MatMul) whose weights are
stored initializers read by that node alone, whose reduction length (a conv's input channels, a
GEMM's K) is a multiple of 4, and whose input and output widths are both at least MIN_CHANNELS:
TensorRT picks sparse kernels only for large enough layers, so zeroing the weights of a small one
would spend accuracy for no speed. In each group of 4 weights along the input-channel axis (for a
conv: at every output channel and kernel position) the 2 of smallest magnitude are set to 0.
Every other layer is left as it is, with the reason recorded. The change is magnitude pruning
without fine-tuning: its effect on the outputs is measured (`Backend.build` reports it) and the run's
validation judges the result against the original.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from deploysparse.graph.rules import attr, readers
from deploysparse.precision import SPARSITY_PATTERNS

PATTERN = SPARSITY_PATTERNS[0]  # "2:4"
GROUP, KEEP = 4, 2
MIN_CHANNELS = 64  # below this width TensorRT's dense kernels win: the layer is left dense


@dataclass(frozen=True)
class LayerChoice:
    """One conv or GEMM: whether it was made 2:4 sparse, and why (not)."""

    node: str
    op_type: str
    weight: str
    sparse: bool
    reason: str

    def to_json(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "weight": self.weight, "reason": self.reason}


@dataclass
class Sparsified:
    """The model with 2:4 weights in the layers that qualified, and every layer's decision."""

    model: onnx.ModelProto
    layers: list[LayerChoice] = field(default_factory=list)
    zeroed: int = 0  # weights set to zero (weights already zero count too)

    @property
    def sparse(self) -> list[LayerChoice]:
        return [layer for layer in self.layers if layer.sparse]

    def to_json(self) -> dict:
        return {
            "pattern": PATTERN,
            "layers_sparse": [layer.to_json() for layer in self.sparse],
            "layers_dense": [layer.to_json() for layer in self.layers if not layer.sparse],
            "weights_zeroed": self.zeroed,
        }


def sparsify_2_4(model: onnx.ModelProto) -> Sparsified:
    """A copy of `model` with the weights of every qualifying layer pruned to 2:4 (module doc)."""
    model = copy.deepcopy(model)
    stored = {tensor.name: tensor for tensor in model.graph.initializer}
    users = readers(model.graph.node)
    result = Sparsified(model)
    for index, node in enumerate(model.graph.node):
        found = _weight_axis(node, stored)
        if found is None:
            continue
        weight_name, axis, why_not = found
        name = node.name or f"#{index} ({node.op_type})"
        shared = [u.name or u.op_type for u in users.get(weight_name, []) if u is not node]
        if why_not is None and shared:
            why_not = f"its weight is shared with node '{shared[0]}'"
        if why_not is not None:
            result.layers.append(LayerChoice(name, node.op_type, weight_name, False, why_not))
            continue
        weight = numpy_helper.to_array(stored[weight_name])
        pruned = prune_2_4(weight, axis)
        result.zeroed += int(np.count_nonzero(pruned == 0) - np.count_nonzero(weight == 0))
        stored[weight_name].CopyFrom(numpy_helper.from_array(pruned.astype(weight.dtype), weight_name))
        result.layers.append(
            LayerChoice(
                name, node.op_type, weight_name, True, f"{_widths(weight, axis)}: 2 of every 4 weights zeroed"
            )
        )
    return result


def prune_2_4(weight: np.ndarray, axis: int) -> np.ndarray:
    """`weight` with the 2 smallest-magnitude values of every 4 consecutive ones along `axis` set to 0
    (ties keep the earlier value); the length along `axis` must be a multiple of 4."""
    moved = np.moveaxis(np.asarray(weight), axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // GROUP, GROUP)
    order = np.argsort(np.abs(groups), axis=-1, kind="stable")
    mask = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(mask, order[..., : GROUP - KEEP], False, axis=-1)
    return np.moveaxis(np.where(mask, groups, 0).reshape(moved.shape), -1, axis)


def is_2_4(weight: np.ndarray, axis: int) -> bool:
    """Whether every group of 4 consecutive values along `axis` has at most 2 non-zeros."""
    moved = np.moveaxis(np.asarray(weight), axis, -1)
    if moved.shape[-1] % GROUP:
        return False
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // GROUP, GROUP)
    return bool((np.count_nonzero(groups, axis=-1) <= KEEP).all())


def weight_axis(node: onnx.NodeProto, model: onnx.ModelProto) -> tuple[str, int] | None:
    """The stored weight a conv or GEMM node multiplies and its reduction axis, whether or not the
    layer qualifies (None for other nodes, or a weight that is not stored)."""
    found = _weight_axis(node, {t.name: t for t in model.graph.initializer})
    return None if found is None else found[:2]


def _weight_axis(
    node: onnx.NodeProto, stored: dict[str, onnx.TensorProto]
) -> tuple[str, int, str | None] | None:
    """(weight, reduction axis, why the layer does not qualify or None) for a Conv, Gemm or MatMul."""
    if (
        node.domain not in ("", "ai.onnx")
        or node.op_type not in ("Conv", "Gemm", "MatMul")
        or len(node.input) < 2
    ):
        return None
    name = node.input[1]
    if name not in stored:
        return (
            name,
            0,
            "its weight is computed, not a stored initializer (quantised weights: sparsify the fp32 model)",
        )
    dims = list(stored[name].dims)
    if stored[name].data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        return name, 0, "its weight is not floating point"
    if node.op_type == "Conv":
        group = int(attr(node, "group", 1))
        if group != 1:
            return (
                name,
                1,
                f"a grouped or depthwise convolution (group {group}): sparse kernels are for dense ones",
            )
        axis, c_in, c_out = 1, dims[1], dims[0]
    elif node.op_type == "Gemm":
        axis = 1 if attr(node, "transB", 0) else 0
        c_in, c_out = dims[axis], dims[1 - axis]
    else:
        if len(dims) != 2:
            return name, 0, f"a {len(dims)}-D MatMul weight (only 2-D weights are GEMMs)"
        axis, c_in, c_out = 0, dims[0], dims[1]
    if c_in % GROUP:
        return name, axis, f"{c_in} input channels: not a multiple of {GROUP}"
    if min(c_in, c_out) < MIN_CHANNELS:
        return name, axis, f"{c_in} -> {c_out} channels: below {MIN_CHANNELS}, dense kernels are faster"
    return name, axis, None


def _widths(weight: np.ndarray, axis: int) -> str:
    out_axis = 0 if axis != 0 else 1
    return f"{weight.shape[axis]} -> {weight.shape[out_axis]} channels"
