"""Denormal float32 weights: find them and flush them to zero (backends/denormal_cost.py measures
what they cost on this CPU).

Adam with coupled L2 drives the weights of filters it has given up on towards zero, and many stop in
float32's subnormal range (|x| < 1.18e-38). x86 arithmetic on subnormal operands takes a slow
microcode path, so a conv holding them can run several times slower than a neighbour of the same
size; ONNX Runtime's `session.set_denormal_as_zero` does not help, because it sets the flush-to-zero
mode for activations while the weights are already stored subnormal. What counts is the weight the
backend runs: ONNX Runtime (at session start) and TensorRT (at build) fold a BatchNormalization into
the Conv before it, W x gamma / sqrt(var + eps) per output channel, and a dead filter's tiny BN scale
turns small normal weights into subnormal ones there (the bundled digits model's fifth conv: 4,170,
which kept it at 2.2 ms where its neighbours take 0.8 on an Intel Xeon, docs/benchmarks.md). So a
weight is flushed when its folded value is subnormal too. Replacing them by zero changes
every output by less than float32 can resolve next to any normal product, so `prune` and `build` do
it by default (`--keep-denormals` opts out), and `analyze` says what they cost before anything else.
Pruning is then credited only with what pruning did: reports time the flushed original too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from deploysparse.graph.rules import readers, rule_for, stored_tensors

_EXPONENT = np.uint32(0x7F800000)
_MANTISSA = np.uint32(0x007FFFFF)
_SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)
# The fold is computed here in float64 and by the backend in float32, which differ by a few units in
# the last place: a folded value this little above the smallest normal float counts as denormal, so no
# weight the backend's rounding puts below it is left behind.
_FOLD_MARGIN = 1.0 + 2.0**-16
_ROUNDS_TO_ZERO = 2.0**-150  # half the smallest subnormal: a folded value at or below it runs as zero


@dataclass
class DenormalCount:
    """Denormal float32 values per weight tensor (only tensors that hold any), as the backend runs
    them: `folded` of the total are normal as stored and denormal once a BatchNormalization is folded
    into their conv."""

    tensors: dict[str, int] = field(default_factory=dict)
    folded: int = 0

    @property
    def total(self) -> int:
        return sum(self.tensors.values())

    def to_json(self) -> dict:
        return {"total": self.total, "tensors": dict(self.tensors), "folded": self.folded}

    def describe(self, limit: int = 4) -> str:
        """'47,861 denormal float32 weights in 2 tensors (conv6.weight 34,680, conv5.weight 13,181)',
        then how many of them only the BatchNorm fold makes denormal."""
        largest = sorted(self.tensors.items(), key=lambda item: -item[1])
        shown = ", ".join(f"{name} {n:,}" for name, n in largest[:limit])
        more = f", {len(largest) - limit} more" if len(largest) > limit else ""
        plural = "s" if len(largest) != 1 else ""
        folded = f"; {self.folded:,} of them once BatchNorm is folded into the conv" if self.folded else ""
        return f"{self.total:,} denormal float32 weights in {len(largest)} tensor{plural} ({shown}{more}){folded}"


def denormal_mask(values: np.ndarray) -> np.ndarray:
    """True where a float32 array holds a subnormal number (zero exponent, non-zero mantissa)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits & _EXPONENT) == 0) & ((bits & _MANTISSA) != 0)


def _weight_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every float32 tensor stored in the graph: initializers and Constant nodes' values."""
    for name, tensor in stored_tensors(model.graph):
        if tensor.data_type == onnx.TensorProto.FLOAT:
            yield name, tensor


def _values(tensor: onnx.TensorProto) -> np.ndarray | None:
    """The tensor's values without a copy where the bytes are inline; None for unloaded external data."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    if tensor.HasField("raw_data"):
        return np.frombuffer(tensor.raw_data, dtype="<f4")
    return numpy_helper.to_array(tensor).reshape(-1)


def bn_fold_scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The per-channel factor a backend folds into a weight, by the weight's name, as the rules say:
    a normalisation's inference scale (Rule.inference_scale: BatchNormalization's gamma / sqrt(var +
    eps), its values stored in the graph) goes into the weight of the node before it (Rule.absorbs_scale:
    a Conv's, along its leading, output-channel axis) when the normalisation alone reads that node's
    output, which is no graph output, and that node alone reads the weight."""
    stored = {name: tensor for name, tensor in _weight_tensors(model)}
    consumers = readers(model.graph.node)
    graph_outputs = {o.name for o in model.graph.output}

    def value(name: str) -> np.ndarray | None:
        return _values(stored[name]) if name in stored else None

    scales: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        producer = rule_for(node)
        index = producer.absorbs_scale if producer is not None else None
        if index is None or len(node.input) <= index or node.output[0] in graph_outputs:
            continue
        weight, after = node.input[index], consumers.get(node.output[0], [])
        norm = rule_for(after[0]) if len(after) == 1 else None
        if (
            norm is None
            or norm.inference_scale is None
            or len(consumers[weight]) != 1
            or weight not in stored
        ):
            continue
        scale = norm.inference_scale(after[0], value)
        if scale is not None:
            scales[weight] = scale
    return scales


def _denormal_masks(
    model: onnx.ModelProto,
) -> Iterator[tuple[str, onnx.TensorProto, np.ndarray, np.ndarray, int]]:
    """(name, tensor, values, mask, folded) for every weight tensor holding a value that runs
    denormal: stored so, or so once folded with the BatchNormalization after it (bn_fold_scales);
    `folded` counts the second kind."""
    scales = bn_fold_scales(model)
    for name, tensor in _weight_tensors(model):
        values = _values(tensor)
        if values is None or not values.size:
            continue
        stored = denormal_mask(values)
        mask, folded = stored, 0
        scale = scales.get(name)
        if scale is not None and values.size % scale.size == 0:
            runs = np.abs(values.reshape(scale.size, -1) * scale[:, None]).reshape(-1)
            tiny = (runs < _FOLD_MARGIN * _SMALLEST_NORMAL) & (runs > _ROUNDS_TO_ZERO)
            mask = stored | tiny
            folded = int(np.count_nonzero(tiny & ~stored))
        if mask.any():
            yield name, tensor, values, mask, folded


def count_denormals(model: onnx.ModelProto) -> DenormalCount:
    """How many float32 weights of each tensor of `model` run denormal on a backend (module doc)."""
    found, folded = {}, 0
    for name, _, _, mask, in_fold in _denormal_masks(model):
        found[name] = int(np.count_nonzero(mask))
        folded += in_fold
    return DenormalCount(found, folded)


def flush_denormals(model: onnx.ModelProto) -> DenormalCount:
    """Set every float32 weight of `model` that runs denormal (count_denormals) to zero, in place;
    return what was flushed.

    Only tensors that hold denormals are rewritten (as raw little-endian bytes), so a model without
    any costs one vectorised pass over its weights and no copy.
    """
    flushed, folded = {}, 0
    for name, tensor, values, mask, in_fold in list(_denormal_masks(model)):
        clean = values.astype("<f4", copy=True)
        clean[mask] = 0.0
        del tensor.float_data[:]
        tensor.raw_data = clean.tobytes()
        flushed[name] = int(np.count_nonzero(mask))
        folded += in_fold
    return DenormalCount(flushed, folded)


def flushed_copy(model: onnx.ModelProto) -> tuple[onnx.ModelProto, DenormalCount]:
    """A copy of `model` with its denormal weights flushed; `model` itself is left as it is."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy, flush_denormals(copy)
