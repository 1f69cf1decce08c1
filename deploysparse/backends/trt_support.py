"""Will TensorRT's ONNX parser accept this graph? Checked from the graph alone, without TensorRT.

Engine builds happen on GPU machines, often on the device in a later CI stage; an unsupported op found
there costs a round trip. This check runs anywhere (`deploysparse build --backend tensorrt
--check-only [--trt-version V]`) against the op table of one TensorRT release (`trt_versions.py`)
and the restrictions of that release's table that can be read off the graph: an input that must be
a constant, an attribute value the parser refuses, an output it cannot produce.

Each restriction below names the tables that list it (from `since` to `until`, both included), so a
check against TensorRT 8.5 still asks for TopK's K as an initializer, and one against 10.x asks for
`sorted=1` and K below 3840 instead. A restriction the graph alone cannot settle (10.15's "axes must
be resolvable to a constant": a computed tensor may still fold at build time) is a warning, not a
rejection. Every finding names its node; the report names the table it was checked against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from deploysparse.backends.notes import NodeReason
from deploysparse.backends.trt_versions import Target, TrtVersion, target
from deploysparse.graph.rules import attr, stored_tensors

V8_5, V10_0, V10_1, V10_15 = TrtVersion(8, 5), TrtVersion(10, 0), TrtVersion(10, 1), TrtVersion(10, 15)
TOPK_MAX_K = 3840  # 10.x: "K input must be less than 3840"
_REDUCTIONS = tuple(sorted(op for op in target().table.ops if op.startswith("Reduce")))


@dataclass
class SupportReport:
    """The result of `check_onnx`: `ok` is False when any node would be rejected."""

    opset: int
    target: Target
    nodes: int = 0  # nodes checked
    unsupported: list[NodeReason] = field(default_factory=list)  # each node the parser would reject
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unsupported

    @property
    def table(self) -> str:
        return self.target.table.source

    def summary(self) -> str:
        version = self.target.table.version
        if self.ok:
            return f"all {self.nodes} nodes are in the TensorRT {version} ONNX parser table"
        ops = sorted({f.op_type for f in self.unsupported})
        first = self.unsupported[0]
        return (
            f"{len(self.unsupported)} node(s) TensorRT {version}'s ONNX parser does not support: "
            f"{', '.join(ops)} (first: node '{first.node}': {first.reason})"
        )

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "opset": self.opset,
            "trt_version": str(self.target.requested),
            "table": self.table,
            "nodes": self.nodes,
            "unsupported": [f.to_json() for f in self.unsupported],
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class _Graph:
    """What the restrictions read besides the node: which tensors are constants, and their values."""

    constants: dict[str, onnx.TensorProto]

    def value(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)


Check = Callable[[onnx.NodeProto, _Graph], str | None]


@dataclass(frozen=True)
class Restriction:
    """A restriction the tables from `since` to `until` (None: the newest too) list for `ops`."""

    ops: tuple[str, ...]
    check: Check
    since: TrtVersion = V8_5
    until: TrtVersion | None = None
    warning: bool = False  # the graph alone cannot settle it: a warning, not a rejection

    def applies(self, table: TrtVersion, op_type: str) -> bool:
        return op_type in self.ops and self.since <= table and (self.until is None or table <= self.until)


def _text(node: onnx.NodeProto, name: str, default: str) -> str:
    value = attr(node, name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _constant_input(index: int, role: str, *, how: str = "an initializer") -> Check:
    def check(node: onnx.NodeProto, graph: _Graph) -> str | None:
        if len(node.input) > index and node.input[index] and node.input[index] not in graph.constants:
            return f"input '{role}' must be {how}, got the computed tensor '{node.input[index]}'"
        return None

    return check


def _zero_input(index: int, not_constant: str, not_zero: str) -> Check:
    """An optional input that, where given, must be a constant of zeros (False); the reason is
    `not_constant` or `not_zero`."""

    def check(node: onnx.NodeProto, graph: _Graph) -> str | None:
        if len(node.input) <= index or not node.input[index]:
            return None
        value = graph.value(node.input[index])
        if value is None:
            return not_constant
        return not_zero if value.any() else None

    return check


def _max_pool_indices(node: onnx.NodeProto, graph: _Graph) -> str | None:
    return "MaxPool's Indices output is not supported" if len([o for o in node.output if o]) > 1 else None


def _pool_rank(node: onnx.NodeProto, graph: _Graph) -> str | None:
    rank = len(attr(node, "kernel_shape", []) or [])
    return None if rank in (2, 3) else f"{rank}-D pooling: only 2-D and 3-D pooling is supported"


def _pool_dilations(node: onnx.NodeProto, graph: _Graph) -> str | None:
    dilations = attr(node, "dilations", None)
    return (
        None
        if not dilations or all(d == 1 for d in dilations)
        else f"dilations {list(dilations)} must be all 1"
    )


def _quantized_types(*allowed: int) -> Check:
    """The quantised type (the zero point's, else a DequantizeLinear's stored input's) must be one of
    `allowed`: the table's types for DequantizeLinear. ONNX Runtime's QDQ quantiser dequantises an int32
    bias, which TensorRT's parser refuses (onnx/onnx-tensorrt#850)."""
    names = ", ".join(onnx.TensorProto.DataType.Name(t) for t in allowed)

    def check(node: onnx.NodeProto, graph: _Graph) -> str | None:
        zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
        held = zero_point or (node.input[0] if node.op_type == "DequantizeLinear" else None)
        tensor = graph.constants.get(held) if held else None
        if tensor is None or tensor.data_type in allowed:
            return None
        kind = onnx.TensorProto.DataType.Name(tensor.data_type)
        hint = (
            " (a quantised bias: keep biases in float)" if tensor.data_type == onnx.TensorProto.INT32 else ""
        )
        return f"{kind} quantisation{hint}: TensorRT quantises to {names} only"

    return check


_INT8 = onnx.TensorProto.INT8
_FP8, _INT4, _FP4 = onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.INT4, onnx.TensorProto.FLOAT4E2M1


_RESIZE_COORDINATES = {
    "half_pixel",
    "pytorch_half_pixel",
    "tf_half_pixel_for_nn",
    "asymmetric",
    "align_corners",
}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


def _resize_modes(node: onnx.NodeProto, graph: _Graph) -> str | None:
    coordinates = _text(node, "coordinate_transformation_mode", "half_pixel")
    if coordinates not in _RESIZE_COORDINATES:
        return f"coordinate_transformation_mode '{coordinates}' is not supported"
    mode = _text(node, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        return f"mode '{mode}' is not supported (nearest or linear)"
    nearest = _text(node, "nearest_mode", "round_prefer_floor")
    if mode == "nearest" and nearest not in _RESIZE_NEAREST:
        return f"nearest_mode '{nearest}' is not supported"
    return None


def _resize_policy(node: onnx.NodeProto, graph: _Graph) -> str | None:
    if attr(node, "antialias", 0):
        return "antialiasing is not supported"
    policy = _text(node, "keep_aspect_ratio_policy", "stretch")
    return (
        None
        if policy == "stretch"
        else f"keep_aspect_ratio_policy '{policy}' is not supported (stretch only)"
    )


def _topk(node: onnx.NodeProto, graph: _Graph) -> str | None:
    if attr(node, "sorted", 1) != 1:
        return "sorted must be 1 (TensorRT returns the top K in order only)"
    k = graph.value(node.input[1]) if len(node.input) > 1 else None
    if k is not None and k.size and int(np.max(k)) >= TOPK_MAX_K:
        return f"K = {int(np.max(k))} must be less than {TOPK_MAX_K}"
    return None


def _scatter_reduction(node: onnx.NodeProto, graph: _Graph) -> str | None:
    reduction = _text(node, "reduction", "none")
    return None if reduction == "none" else f"reduction '{reduction}' is not supported"


def _constant_attributes(node: onnx.NodeProto, graph: _Graph) -> str | None:
    refused = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
    return f"attribute '{refused[0]}' is not supported" if refused else None


def _lstm(node: onnx.NodeProto, graph: _Graph) -> str | None:
    if attr(node, "input_forget", 0):
        return "input_forget must be 0"
    return "layout must be 0" if attr(node, "layout", 0) else None


def _first_output_only(node: onnx.NodeProto, graph: _Graph) -> str | None:
    extra = [o for o in node.output[1:] if o]
    return f"only the first output is supported, '{extra[0]}' is used" if extra else None


def _einsum(node: onnx.NodeProto, graph: _Graph) -> str | None:
    equation = _text(node, "equation", "").replace(" ", "")
    if "..." in equation:
        return "ellipsis in the equation is not supported"
    for term in equation.split("->")[0].split(","):
        if len(set(term)) != len(term):
            return f"diagonal operation '{term}' is not supported"
    return None


# One entry per restriction of the tables: ops, check, and the tables that list it.
RESTRICTIONS: tuple[Restriction, ...] = (
    Restriction(("MaxPool",), _max_pool_indices),
    Restriction(("AveragePool", "MaxPool"), _pool_rank),
    Restriction(("AveragePool", "MaxPool", "LpPool"), _pool_dilations, since=V10_0),
    Restriction(
        ("QuantizeLinear", "DequantizeLinear"),
        _zero_input(
            2,
            "the zero point must be a constant 0",
            "the zero point must be 0 (TensorRT supports symmetric quantisation only)",
        ),
    ),
    Restriction(("QuantizeLinear", "DequantizeLinear"), _quantized_types(_INT8), until=TrtVersion(8, 6)),
    Restriction(
        ("QuantizeLinear", "DequantizeLinear"), _quantized_types(_INT8, _FP8, _INT4), since=V10_0, until=V10_1
    ),
    Restriction(
        ("QuantizeLinear", "DequantizeLinear"), _quantized_types(_INT8, _FP8, _INT4, _FP4), since=V10_15
    ),
    Restriction(("Resize",), _resize_modes),
    Restriction(("Resize",), _resize_policy, since=V10_15),
    Restriction(("CumSum",), _constant_input(1, "axis")),
    Restriction(("TopK",), _constant_input(1, "K"), until=V8_5),
    Restriction(("TopK",), _topk, since=V10_0),
    Restriction(("Slice",), _constant_input(3, "axes"), until=V10_1),
    Restriction(("Squeeze", "Unsqueeze"), _constant_input(1, "axes"), until=V10_1),
    Restriction(
        ("Squeeze", "Unsqueeze"),
        _constant_input(1, "axes", how="resolvable to a constant at build time"),
        since=V10_15,
        warning=True,
    ),
    Restriction(("InstanceNormalization",), _constant_input(1, "scale"), until=V8_5),
    Restriction(("InstanceNormalization",), _constant_input(2, "B"), until=V8_5),
    Restriction(("Pad",), _constant_input(3, "axes"), since=V10_0, until=V10_1),
    Restriction(_REDUCTIONS, _constant_input(1, "axes"), since=V10_0),
    Restriction(("OneHot",), _constant_input(1, "depth", how="a build-time constant"), since=V10_0),
    Restriction(
        ("Dropout",),
        _zero_input(2, "input 'training_mode' must be an initializer", "training_mode must be False"),
        since=V10_0,
    ),
    Restriction(("ScatterND",), _scatter_reduction, since=V10_0),
    Restriction(("Constant",), _constant_attributes, since=V10_0),
    Restriction(("LSTM",), _lstm, since=V10_0),
    Restriction(("LayerNormalization",), _first_output_only, since=V10_0),
    # Listed in the 8.x tables; the 10.12 release notes add ellipsis and diagonal support.
    Restriction(("Einsum",), _einsum, until=V10_1),
)


def check_onnx(model: onnx.ModelProto, trt_version: str | TrtVersion | None = None) -> SupportReport:
    """Check every node of `model`'s main graph against the support table of `trt_version` (the
    newest table when None)."""
    chosen = target(trt_version)
    table = chosen.table
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    report = SupportReport(opset=opset, target=chosen, nodes=len(model.graph.node))
    if chosen.note:
        report.warnings.append(chosen.note)
    if opset > table.max_opset:
        report.warnings.append(
            f"opset {opset} is newer than the table's (TensorRT {table.version}: opset <= {table.max_opset}); "
            "the parser may refuse ops whose newer version it does not know"
        )
    elif opset < table.min_opset:
        report.warnings.append(
            f"opset {opset} is older than TensorRT {table.version} parses (opset {table.min_opset} and up)"
        )
    graph = _Graph(dict(stored_tensors(model.graph)))
    for index, node in enumerate(model.graph.node):
        name = node.name or f"#{index} ({node.op_type})"
        for warning, reason in _findings(node, graph, table.version, table.ops):
            if warning:
                report.warnings.append(f"node '{name}' ({node.op_type}): {reason}")
            else:
                report.unsupported.append(NodeReason(name, node.op_type, reason))
    return report


def _findings(
    node: onnx.NodeProto, graph: _Graph, version: TrtVersion, ops: frozenset[str]
) -> list[tuple[bool, str]]:
    """(is a warning, reason) for each way TensorRT `version` refuses `node`; the first rejection only."""
    if node.domain not in ("", "ai.onnx"):
        return [
            (False, f"op {node.domain}::{node.op_type} is outside the ONNX domain (TensorRT needs a plugin)")
        ]
    if node.op_type not in ops:
        return [(False, f"op {node.op_type} is not in the TensorRT {version} supported-operator table")]
    found: list[tuple[bool, str]] = []
    for restriction in RESTRICTIONS:
        if not restriction.applies(version, node.op_type):
            continue
        reason = restriction.check(node, graph)
        if reason:
            found.append((restriction.warning, reason))
            if not restriction.warning:
                break
    return found
