"""Where the time goes: per-node latency, for one model or several side by side.

A whole-model speed-up says nothing about which layers earned it. A backend with a profiler
(`Backend.profile`; ONNX Runtime's: backends/onnxruntime/profiler.py) runs the models, drops the
warm-up runs and reports each node's median time per run as a `LayerProfile`. Several models (the
original, its flushed copy, the compact one) are run interleaved, run after run, so a shared
machine's load falls on all of them alike. Rows are the source model's nodes, and surgery keeps node
names, so `side_by_side_rows` lines up the original's and the compact model's rows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from deploysparse.backends import DEFAULT_BACKEND, get_backend
from deploysparse.records import attribute_record


@dataclass
class LayerTime:
    """One node of the optimised graph: its median time per run and its share of the model's time."""

    node: str
    op: str
    ms: float
    share: float = 0.0


@dataclass
class LayerProfile:
    """Per-node latency of one model at one batch size."""

    model: str
    batch: int
    runs: int
    layers: list[LayerTime] = field(default_factory=list)

    @property
    def total_ms(self) -> float:
        return sum(layer.ms for layer in self.layers)

    def to_json(self) -> dict:
        return {
            **attribute_record(self, "model", "batch", "runs", "total_ms"),
            "layers": [asdict(layer) for layer in self.layers],
        }


def profile_layers(
    model: str | os.PathLike[str],
    batch: int = 1,
    warmup: int = 5,
    runs: int = 20,
    threads: int | None = None,
    backend: str = DEFAULT_BACKEND,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> LayerProfile:
    """Per-node latency of one model on `backend` (ONNX Runtime CPU: the session `bench` uses), its
    inputs at `shapes` (batch dim set to `batch`); several models side by side:
    `get_backend(name).profile({label: path, ...})`."""
    return get_backend(backend).profile({str(model): model}, batch, warmup, runs, threads, shapes=shapes)[
        str(model)
    ]


def side_by_side_rows(profiles: Mapping[str, LayerProfile]) -> list[dict]:
    """One row per node across the profiles: {'node', 'op', 'ms': {label: ms}}, slowest (first profile) first.

    A node missing from a profile (removed, or fused differently) has no entry for that label.
    """
    rows: dict[str, dict] = {}
    for label, profile in profiles.items():
        for layer in profile.layers:
            row = rows.setdefault(layer.node, {"node": layer.node, "op": layer.op, "ms": {}})
            row["ms"][label] = layer.ms
    first = next(iter(profiles), None)
    return sorted(rows.values(), key=lambda row: -max(row["ms"].get(first, 0.0), 0.0))
