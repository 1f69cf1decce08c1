"""Will TensorRT's ONNX parser accept this graph? Checked from the graph alone, without TensorRT.

Engine builds happen on GPU machines, often in a later CI stage; an unsupported op found there costs
a round trip. This check runs anywhere (`deploysparse build --backend tensorrt --check-only`) against
a table of the op types the parser supports and the restrictions that can be read off the graph.

Source of the table: onnx/onnx-tensorrt, docs/operators.md ("Supported ONNX Operators"), the revision
for TensorRT 8.5, which supports the default ONNX domain up to opset 17. Later TensorRT releases
support more ops and opsets, so an op missing here is reported as "not in the TensorRT 8.5 table":
check the operators.md of the TensorRT version you deploy before rewriting the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

DOCUMENTED_TENSORRT = "8.5"
MAX_DOCUMENTED_OPSET = 17

# Op types marked "Y" in onnx-tensorrt docs/operators.md for TensorRT 8.5 (default ONNX domain).
SUPPORTED_OPS: frozenset[str] = frozenset(
    [
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Ceil",
        "Celu",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Cosh",
        "CumSum",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "EyeLike",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gemm",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "GridSample",
        "GRU",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "If",
        "ImageScaler",
        "InstanceNormalization",
        "IsNaN",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "Loop",
        "LRN",
        "LSTM",
        "LpNormalization",
        "LpPool",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "MeanVarianceNormalization",
        "Min",
        "Mod",
        "Mul",
        "Neg",
        "NonMaxSuppression",
        "NonZero",
        "Not",
        "OneHot",
        "Or",
        "Pad",
        "ParametricSoftplus",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Range",
        "Reciprocal",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "ReverseSequence",
        "RNN",
        "RoiAlign",
        "Round",
        "ScaledTanh",
        "Scan",
        "Scatter",
        "ScatterElements",
        "ScatterND",
        "Selu",
        "Shape",
        "Shrink",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "ThresholdedRelu",
        "Tile",
        "TopK",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Upsample",
        "Where",
        "Xor",
    ]
)

# Inputs the table says must be constant (an initializer or a Constant node's output).
_CONSTANT_INPUTS: dict[str, dict[int, str]] = {
    "CumSum": {1: "axis"},
    "TopK": {1: "K"},
    "Slice": {3: "axes"},
    "Squeeze": {1: "axes"},
    "Unsqueeze": {1: "axes"},
    "InstanceNormalization": {1: "scale", 2: "B"},
}
# Quantisation ops whose zero point must be 0 (TensorRT's quantisation is symmetric).
_ZERO_POINT_INPUT = {"QuantizeLinear": 2, "DequantizeLinear": 2}


@dataclass(frozen=True)
class Finding:
    """One node TensorRT's parser would reject, and why."""

    node: str
    op_type: str
    reason: str

    def to_json(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "reason": self.reason}


@dataclass
class SupportReport:
    """The result of `check_onnx`: `ok` is False when any node would be rejected."""

    opset: int
    unsupported: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unsupported

    def summary(self) -> str:
        if self.ok:
            return f"all ops are in the TensorRT {DOCUMENTED_TENSORRT} ONNX parser table"
        ops = sorted({f.op_type for f in self.unsupported})
        first = self.unsupported[0]
        return (
            f"{len(self.unsupported)} node(s) TensorRT's ONNX parser does not support: {', '.join(ops)} "
            f"(first: node '{first.node}': {first.reason})"
        )

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "opset": self.opset,
            "table": f"onnx-tensorrt docs/operators.md, TensorRT {DOCUMENTED_TENSORRT}",
            "unsupported": [f.to_json() for f in self.unsupported],
            "warnings": self.warnings,
        }


def check_onnx(model: onnx.ModelProto) -> SupportReport:
    """Check every node of `model`'s main graph against the TensorRT parser's support table."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    report = SupportReport(opset=opset)
    if opset > MAX_DOCUMENTED_OPSET:
        report.warnings.append(
            f"opset {opset} is newer than the documented table (TensorRT {DOCUMENTED_TENSORRT}: opset "
            f"<= {MAX_DOCUMENTED_OPSET}); newer TensorRT releases may still accept it"
        )
    constants = {init.name for init in model.graph.initializer}
    constant_values = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            constants.update(node.output)
            for attr in node.attribute:
                if attr.name == "value":
                    constant_values[node.output[0]] = attr.t
    for index, node in enumerate(model.graph.node):
        name = node.name or f"#{index} ({node.op_type})"
        reason = _rejection(node, constants, constant_values)
        if reason:
            report.unsupported.append(Finding(name, node.op_type, reason))
    return report


def _rejection(
    node: onnx.NodeProto, constants: set[str], constant_values: dict[str, onnx.TensorProto]
) -> str | None:
    if node.domain not in ("", "ai.onnx"):
        return f"op {node.domain}::{node.op_type} is outside the ONNX domain (TensorRT needs a plugin for it)"
    if node.op_type not in SUPPORTED_OPS:
        return f"op {node.op_type} is not in the TensorRT {DOCUMENTED_TENSORRT} supported-operator table"
    if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
        return "MaxPool's Indices output is not supported"
    for position, role in _CONSTANT_INPUTS.get(node.op_type, {}).items():
        if len(node.input) > position and node.input[position] and node.input[position] not in constants:
            return f"input '{role}' must be a constant (initializer), got the computed tensor '{node.input[position]}'"
    zp_index = _ZERO_POINT_INPUT.get(node.op_type)
    if zp_index is not None and len(node.input) > zp_index and node.input[zp_index]:
        zero_point = constant_values.get(node.input[zp_index])
        if zero_point is None:
            return "the zero point must be a constant 0"
        if onnx.numpy_helper.to_array(zero_point).any():
            return "the zero point must be 0 (TensorRT supports symmetric quantisation only)"
    return None
