"""Quantized ops (QuantizeLinear and DequantizeLinear, QLinearConv, the integer kernels): no channel
rule yet, so the analysis pins what they touch. What the package asks of them is whether a graph runs
in int8 (`validate` picks its tolerances by that)."""

from __future__ import annotations

import onnx

INT8_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
    }
)


def int8_op_types(graph: onnx.GraphProto) -> list[str]:
    """The quantized op types the graph holds (Q/DQ pairs, integer kernels), sorted; empty for a float model."""
    return sorted({node.op_type for node in graph.node if node.op_type in INT8_OPS})


def runs_int8(graph: onnx.GraphProto) -> bool:
    """Whether the graph holds quantized ops (Q/DQ pairs or integer kernels): an int8 model."""
    return bool(int8_op_types(graph))
