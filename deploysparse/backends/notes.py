"""What a person reads about a build beyond "built X": the keys a backend adds to its metadata, in words,
and the one record of "this node, and why" the support check and the fp16 conversion report.

`deploysparse build` prints these lines after a build and `deploysparse run` after its table, from the
same metadata (a run's report.json holds it under `extra.build`), so both say the same thing: whether
the engine was built here, which of ONNX Runtime's optimisations were published, how the artefact compared with the fp32 model, which nodes stayed fp32,
which layers became 2:4 sparse, and the command lines that build the engine on the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NodeReason:
    """A node, its op, and why something was decided about it (refused by a parser, kept in fp32)."""

    node: str
    op_type: str
    reason: str

    def to_json(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "reason": self.reason}


def build_notes(metadata: Mapping[str, Any], folder: str = "") -> list[str]:
    """One line per thing to know; `folder` prefixes the file names (e.g. "build/" in a run's output)."""
    lines: list[str] = []
    engine = metadata.get("engine")
    if engine and not engine["built"]:
        lines.append(f"engine not built: {engine['reason']}")
    validation = metadata.get("artifact_validation")
    if validation:
        verdict = "passed" if validation["passed"] else f"FAILED: {validation['failures'][0]}"
        lines.append(
            f"{folder}{metadata['artifact_onnx']} against the fp32 model on ONNX Runtime CPU ({validation['data']}): "
            f"max abs err {validation['max_abs_err']:.3g}, cosine {validation['cosine']:.6f}, "
            f"top-1 agreement {_maybe(validation['top1_agreement'])}: {verdict}"
        )
    optimization = metadata.get("graph_optimization") or {}
    if optimization.get("reason"):
        lines.append(
            f"published ONNX Runtime's '{optimization['level']}' optimisations: {optimization['reason']}"
        )
    fp16 = metadata.get("fp16")
    if fp16:
        kept = fp16["kept_fp32"]
        names = ", ".join(k["node"] for k in kept[:5]) + (", ..." if len(kept) > 5 else "")
        which = f"{len(kept)} node(s) kept in fp32 ({names})" if kept else "every node in fp16"
        lines.append(f"fp16: {which}, judged on {fp16['judged_on']}")
        simulated = fp16.get("simulated_validation")
        if simulated and not simulated["passed"]:
            lines.append(f"fp16 storage, simulated: FAILED: {simulated['failures'][0]}")
    sparsity = metadata.get("sparsity")
    if sparsity:
        change = sparsity["change"]
        lines.append(
            f"2:4 sparsity: {len(sparsity['layers_sparse'])} layer(s) sparse, {len(sparsity['layers_dense'])} "
            f"left dense; the outputs moved by cosine {change['cosine']:.6f}, top-1 agreement "
            f"{_maybe(change['top1_agreement'])} ({change['data']})"
        )
    commands = metadata.get("commands")
    if commands:
        lines.append(
            f"build the engine on the device ({commands['runs_on']}; ops checked against TensorRT "
            f"{commands['trt_version']}): sh {folder}{commands['script']}"
        )
        lines.append(f"  trtexec: {commands['trtexec']}")
        lines.append(f"  polygraphy: {commands['polygraphy']}")
        lines.extend(f"  note: {note}" for note in commands["notes"])
    support = metadata.get("support") or {}
    lines.extend(f"warning: {w}" for w in [*support.get("warnings", []), *metadata.get("warnings", [])])
    return lines


def _maybe(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
