"""Per-op knowledge lives in the op rules (deploysparse/graph/rules/): outside the graph layer, the
backends, the front end and deploysparse/torch.py, no module names an ONNX op type. A module that
needs to know something of an op asks its rule (or graph/queries.py), so a registered custom op is
seen there too.

What counts as naming an op: a string constant in the code that is exactly an op type of ONNX's
default domain (`node.op_type == "Conv"`, `{"Relu", "Clip"}`, `make_node("Identity", ...)`).
Docstrings, comments and messages that mention an op in a sentence are prose and are not scanned. The
ai.onnx.ml and training domains are left out: the graph layer handles none of their ops, and names
such as "Adam", "Scaler" or "Normalizer" are ordinary words elsewhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import onnx.defs

import deploysparse

PACKAGE = Path(deploysparse.__file__).parent
OP_TYPES = frozenset(s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain == "")
MAY_NAME_OPS = ("graph", "backends", "frontend", "torch.py")  # relative to deploysparse/


def op_names(source: str) -> list[tuple[int, str]]:
    """(line, op type) of every string constant in `source` that is exactly an ONNX op type."""
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in OP_TYPES
    ]


def test_the_scan_finds_op_names_in_code_and_not_in_prose() -> None:
    source = '''"""Fold a BatchNormalization into the Conv."""
ACTIVATIONS = {"Relu", "Clip"}
if node.op_type == "Conv":
    raise ValueError(f"{node.name}: not a Conv")
'''
    assert sorted(op_names(source)) == [(2, "Clip"), (2, "Relu"), (3, "Conv")]


def test_only_the_graph_layer_backends_and_front_end_name_onnx_ops() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in MAY_NAME_OPS:
            continue
        found += [f"deploysparse/{relative}:{line}: {name!r}" for line, name in op_names(path.read_text())]
    assert not found, "ask the op rules (deploysparse/graph/rules/) instead of naming ops:\n" + "\n".join(
        found
    )
