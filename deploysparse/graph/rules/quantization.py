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


def runs_int8(graph: onnx.GraphProto) -> bool:
    """Whether the graph holds quantized ops (Q/DQ pairs or integer kernels): an int8 model."""
    return any(node.op_type in INT8_OPS for node in graph.node)
