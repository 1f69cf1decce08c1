"""Parameters and multiply-accumulates counted from the graph, before and after a plan.

Budgets search over kept-channel counts many times, so the count is one vectorised pass: every
channel identity carries the fraction of it that is kept (0/1 for a concrete plan, k/n for "keep k
of this group's n channels"), and each initializer and each conv shrinks by the kept fraction of the
tensors it is attached to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from deploysparse.graph.analysis import GraphAnalysis
from deploysparse.graph.rules import rule_for


@dataclass(frozen=True)
class Cost:
    """params: elements of all floating-point initializers; macs: multiply-accumulates of every node
    whose rule counts them (Conv, ConvTranspose, Gemm, MatMul) for one sample at the analysed shape."""

    params: int
    macs: int


def identity_fractions(ga: GraphAnalysis, keep: Mapping[str, object] | None) -> np.ndarray:
    """Kept fraction per channel identity: keep maps group id -> kept count or kept indices."""
    frac = np.ones(len(ga.identity_group))
    for gid, value in (keep or {}).items():
        ids = ga.group_identities[ga.group_index(gid)]
        if np.ndim(value) == 0:
            frac[ids] = float(value) / len(ids)
        else:
            mask = np.zeros(len(ids))
            mask[np.asarray(value, dtype=np.int64)] = 1.0
            frac[ids] = mask
    return frac


class CostModel:
    """Precomputed per-node and per-initializer sizes so `cost(keep)` is cheap."""

    def __init__(self, ga: GraphAnalysis) -> None:
        self.ga = ga
        graph = ga.model.graph
        self.init_size = {
            init.name: int(np.prod(init.dims)) for init in graph.initializer if _is_float(init.data_type)
        }
        self.mac_nodes: list[tuple[int, tuple[str, ...]]] = []
        for node in graph.node:
            rule = rule_for(node)
            if rule is not None and rule.macs is not None:
                self.mac_nodes.append(rule.macs(node, ga.table))

    def _fraction(self, frac_elem: np.ndarray, tensor: str, channels: np.ndarray | None = None) -> float:
        if tensor not in self.ga.table.base:
            return 1.0
        elements = self.ga.table.elements(tensor, channels)
        return float(frac_elem[elements].mean()) if len(elements) else 1.0

    def cost(self, keep: Mapping[str, object] | None = None) -> Cost:
        frac_elem = identity_fractions(self.ga, keep)[self.ga.identity] if keep else None
        if frac_elem is None:
            return Cost(sum(self.init_size.values()), int(sum(m for m, _ in self.mac_nodes)))
        scale: dict[str, float] = {}
        seen: set[tuple[str, str, int]] = set()
        for att in self.ga.attachments:
            key = (att.node, att.name, att.axis)
            if key in seen or att.name not in self.init_size:
                continue
            seen.add(key)
            scale[att.name] = scale.get(att.name, 1.0) * self._fraction(frac_elem, att.tensor, att.channels)
        params = sum(size * scale.get(name, 1.0) for name, size in self.init_size.items())
        macs = 0.0
        for m, scaled_by in self.mac_nodes:
            macs += m * float(np.prod([self._fraction(frac_elem, tensor) for tensor in scaled_by]))
        return Cost(round(params), round(macs))


def count_cost(ga: GraphAnalysis, keep: Mapping[str, object] | None = None) -> Cost:
    """Params and MACs of the model with `keep` (group id -> kept count or indices) applied."""
    return CostModel(ga).cost(keep)


def _is_float(data_type: int) -> bool:
    return data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
