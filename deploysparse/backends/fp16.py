"""fp16 artefacts: the precision lives in the ONNX, with fp32 kept where fp16 overflows or loses the answer.

A strongly typed TensorRT network (TensorRT 10; the only kind in 11) computes each layer in the type
its ONNX tensors have, so an fp16 engine is built from an fp16 ONNX with explicit casts, and the
choice of what stays fp32 is made here, where it can be measured, rather than by a builder flag on
the device. ONNX Runtime's fp16 build writes the same artefact (one converter for both backends).

What stays fp32, judged on the calibration data:
- a node whose weights exceed fp16's range (65504): they cannot be stored in fp16 at all;
- a node whose activations reach a quarter of fp16's range (the data is a sample: 4x headroom);
- a reduction, softmax or normalisation (many terms summed into one), a node whose activations
  exceed 512 (where fp16's spacing is 0.5 or coarser) or all lie below fp16's smallest normal value
  (6.1e-5: subnormals keep few bits, below 6e-8 nothing), if converting it to fp16 puts the model's
  outputs outside the fp16 tolerances of `precision.py` against the fp32 model. These candidates
  start in fp32 and are moved to fp16 one at a time, in graph order, each kept only if the outputs
  stay within tolerance; a node left in fp32 records the failure that kept it there.
Without calibration data nothing can be judged: the reductions, softmaxes and normalisations stay
fp32 and the conversion says so.

The judging runs on ONNX Runtime's CPU provider, but not on the fp16 file itself: ONNX Runtime runs
an fp16 op without a CPU kernel in fp32 between casts and drops the casts between two such ops
(measured: an fp16 MatMul -> Mul chain carried 1e5 through without overflowing). So each candidate is
judged on `simulate_fp16`: the fp32 model with every tensor and weight the artefact holds in fp16
rounded to fp16 (overflowing to inf as fp16 does) by explicit Cast pairs, which ONNX Runtime keeps,
and every op computed in fp32 between them. That is how TensorRT's fp16 kernels behave where it
matters (convolutions and GEMMs accumulate in fp32 and round their outputs); fp16 accumulation
inside a reduction is not modelled. The cast insertion itself is onnxconverter-common's
(`convert_float_to_float16` with the kept nodes blocked, inputs and outputs kept fp32).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from deploysparse.backends import REFERENCE_BACKEND, reference_backend
from deploysparse.backends.notes import NodeReason
from deploysparse.calibration import batches, sample_count
from deploysparse.errors import BackendError, first_line
from deploysparse.graph.rules import stored_tensors
from deploysparse.precision import DEFAULT_TOLERANCES, Tolerances

if TYPE_CHECKING:
    from deploysparse.validate import ValidationReport

FP16_MAX = 65504.0
HEADROOM = 4.0  # activations may exceed what the calibration data showed by this factor
RANGE_LIMIT = FP16_MAX / HEADROOM
LARGE_RANGE = 512.0  # fp16's spacing is 0.5 from here up: judged by the effect on the outputs
SMALL_RANGE = 2.0**-14  # fp16's smallest normal: a tensor entirely below it keeps few bits, or none
JUDGE_SAMPLES = 256  # at most this many calibration samples judge each candidate (a run per candidate)
# Ops that sum many terms into one value, or normalise by such a sum.
SENSITIVE_OPS = frozenset(
    {
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMean",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "GlobalAveragePool",
        "GlobalLpPool",
        "Softmax",
        "LogSoftmax",
        "LayerNormalization",
        "GroupNormalization",
        "InstanceNormalization",
        "LpNormalization",
        "MeanVarianceNormalization",
        "RMSNormalization",
    }
)


@dataclass
class Fp16Conversion:
    """The fp16 artefact, what stayed fp32 and on what data that was judged."""

    model: onnx.ModelProto
    kept: list[NodeReason] = field(default_factory=list)  # the nodes computed in fp32, and why
    judged_on: str = ""
    candidates: int = 0  # nodes whose conversion was judged by its effect on the outputs
    # The final choice's outputs against fp32 on the judging data (simulate_fp16); None without data.
    simulated: dict | None = None

    def to_json(self) -> dict:
        return {
            "judged_on": self.judged_on,
            "candidates_judged": self.candidates,
            "kept_fp32": [k.to_json() for k in self.kept],
            "simulated_validation": self.simulated,
        }


def convert_fp16(
    model: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray] | None = None,
    tolerances: Tolerances = DEFAULT_TOLERANCES["fp16"],
) -> Fp16Conversion:
    """The fp16 version of `model` (inputs and outputs stay fp32), judged on `feeds` (module doc)."""
    model = _named(model)
    nodes = {node.name: node for node in model.graph.node}
    kept: dict[str, str] = {
        name: f"weights up to {peak:.4g} exceed fp16's range ({FP16_MAX:g})"
        for name, peak in _weight_peaks(model).items()
        if peak > FP16_MAX
    }
    if feeds is None:
        for name, node in nodes.items():
            if node.op_type in SENSITIVE_OPS:
                kept.setdefault(name, "a reduction or normalisation, kept fp32 unjudged: no calibration data")
        return Fp16Conversion(
            _cast(model, kept),
            _kept(nodes, kept),
            "nothing: no calibration data, activation ranges unmeasured",
        )
    judged = _first(feeds, JUDGE_SAMPLES)
    peaks, reference = _activation_peaks(model, judged)
    candidates = []
    for name, node in nodes.items():
        peak = max((peaks.get(t, 0.0) for t in [*node.input, *node.output]), default=0.0)
        if name in kept:
            continue
        if peak > RANGE_LIMIT:
            kept[name] = (
                f"activations reach {peak:.4g} on the calibration data, beyond fp16's range with "
                f"{HEADROOM:g}x headroom ({RANGE_LIMIT:g})"
            )
        elif node.op_type in SENSITIVE_OPS or peak > LARGE_RANGE or 0.0 < peak < SMALL_RANGE:
            candidates.append(name)
    trial = {**kept, **dict.fromkeys(candidates, "")}
    for name in candidates:
        del trial[name]
        failures = _judge(simulate_fp16(model, trial), judged, reference, tolerances).failures
        if failures:
            trial[name] = f"in fp16 the outputs leave the fp16 tolerances: {failures[0]}"
    samples = sample_count(judged)
    total = sample_count(feeds)
    data = f"{samples} calibration samples" + (f" (the first of {total})" if total > samples else "")
    final = _judge(simulate_fp16(model, trial), judged, reference, tolerances)
    return Fp16Conversion(_cast(model, trial), _kept(nodes, trial), data, len(candidates), final.to_json())


def simulate_fp16(model: onnx.ModelProto, kept: Collection[str]) -> onnx.ModelProto:
    """An fp32 model that rounds like the fp16 artefact of `model` with the nodes `kept` in fp32 stores
    its values: the output of every fp16 node, and every float tensor or weight an fp16 node reads,
    passes through fp16 (Cast to float16 and back); the ops compute in fp32 (module doc: why not run
    the fp16 file itself). Names of nodes, inputs and outputs are those of `model`."""
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST

    model = _named(model)
    floats = _float_tensors(model)
    blocked = set(kept) | {n.name for n in model.graph.node if n.op_type in DEFAULT_OP_BLOCK_LIST}
    simulated = copy.deepcopy(model)
    stored = {t.name: t for t in simulated.graph.initializer}
    rounded: dict[str, str] = {}  # float tensor -> the name of its fp16-rounded value
    nodes: list[onnx.NodeProto] = []
    for node in simulated.graph.node:
        fp16 = node.name not in blocked
        if fp16:
            for index, name in enumerate(node.input):
                if name in floats and name not in rounded:
                    rounded[name] = f"{name}/fp16"
                    if name in stored:
                        values = (
                            onnx.numpy_helper.to_array(stored[name]).astype(np.float16).astype(np.float32)
                        )
                        simulated.graph.initializer.append(
                            onnx.numpy_helper.from_array(values, rounded[name])
                        )
                    else:
                        nodes.extend(_round_trip(name, rounded[name]))
                if name in rounded:
                    node.input[index] = rounded[name]
        nodes.append(node)
        if fp16:
            for index, name in enumerate(node.output):
                if name in floats:  # stored in fp16: every reader sees the rounded value
                    node.output[index] = f"{name}/fp32"
                    nodes.extend(_round_trip(node.output[index], name))
                    rounded[name] = name
    del simulated.graph.node[:]
    simulated.graph.node.extend(nodes)
    return simulated


def _round_trip(source: str, target: str) -> list[onnx.NodeProto]:
    """`target` = `source` rounded to fp16 and widened back to fp32."""
    half = f"{target}/half"
    return [
        onnx.helper.make_node("Cast", [source], [half], to=onnx.TensorProto.FLOAT16, name=f"{half}/cast"),
        onnx.helper.make_node("Cast", [half], [target], to=onnx.TensorProto.FLOAT, name=f"{target}/cast"),
    ]


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Every float32 tensor of the main graph: inputs, stored weights and what shape inference types."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    floats = {i.name for i in infos if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    return floats | {n for n, t in stored_tensors(model.graph) if t.data_type == onnx.TensorProto.FLOAT}


def _cast(model: onnx.ModelProto, keep: Mapping[str, str]) -> onnx.ModelProto:
    """onnxconverter-common's conversion with the nodes `keep` names left in fp32 (casts around them).

    Values round as fp16 rounds them: no clamping of tiny weights up to an arbitrary floor; weights
    beyond fp16's range belong to nodes kept in fp32."""
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise BackendError(
            "fp16 artefacts need the onnxconverter-common package (pip install onnxconverter-common)"
        ) from exc
    try:
        with warnings.catch_warnings():  # one warning per weight below fp16's range: noise
            warnings.simplefilter("ignore")
            return float16.convert_float_to_float16(
                copy.deepcopy(model),
                min_positive_val=0.0,
                max_finite_val=FP16_MAX,
                keep_io_types=True,
                node_block_list=sorted(keep),
            )
    except Exception as exc:
        raise BackendError(f"fp16 conversion failed ({first_line(exc)})") from exc


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with a unique name on every node (nodes are kept in fp32 by name), copied if renamed."""
    names = [node.name for node in model.graph.node]
    if all(names) and len(set(names)) == len(names):
        return model
    model = copy.deepcopy(model)
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op_type}_{index}"
        seen.add(node.name)
    return model


def _weight_peaks(model: onnx.ModelProto) -> dict[str, float]:
    """The largest |weight| each node reads from a stored float tensor."""
    stored = {
        name: float(np.abs(onnx.numpy_helper.to_array(t)).max(initial=0.0))
        for name, t in stored_tensors(model.graph)
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
    }
    return {
        node.name: max((stored.get(i, 0.0) for i in node.input), default=0.0) for node in model.graph.node
    }


def _activation_peaks(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The largest |value| of every floating tensor the nodes compute, and the graph outputs, over `feeds`."""
    outputs = [o.name for o in model.graph.output]
    tensors = list(dict.fromkeys([*(o for n in model.graph.node for o in n.output if o), *outputs]))
    peaks: dict[str, float] = {}
    collected: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for values in reference_backend().intermediate_batches(model, feeds, tensors):
        for name, value in values.items():
            if value.dtype.kind == "f" and value.size:
                peaks[name] = max(peaks.get(name, 0.0), float(np.abs(value).max()))
            if name in collected:
                collected[name].append(value)
    return peaks, {name: np.concatenate(parts) for name, parts in collected.items()}


def _judge(
    candidate: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    tolerances: Tolerances,
) -> ValidationReport:
    from deploysparse.validate import compare_outputs

    outputs = reference_backend().intermediates(candidate, feeds)
    return compare_outputs(
        reference,
        outputs,
        tolerances,
        original="the fp32 model",
        compact="fp16 storage, simulated",
        backend=REFERENCE_BACKEND,
        precision="fp16",
    )


def _first(feeds: Mapping[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    return next(batches(feeds, count))


def _kept(nodes: Mapping[str, onnx.NodeProto], kept: Mapping[str, str]) -> list[NodeReason]:
    return [NodeReason(name, nodes[name].op_type, reason) for name, reason in kept.items() if reason]
