"""Latency budgets: a per-layer latency table measured on the target backend, and the latency model
that predicts the model's latency from it at any kept channel counts. The allocation that spends a
--latency-target on it (HALP, Shen et al. NeurIPS 2022) is deploysparse.budget.latency.

FLOPs fall faster than latency: a conv with 61 channels runs no faster than one with 64, memory-bound
layers barely shrink, and the first layers cost more per MAC than the last. So the budget asks the
backend. Every layer whose rule says what it times like (Rule.timing: a 2-D Conv, a Gemm, a 2-D
MatMul, a registered op that answers) is timed on its own, as a one-node ONNX model
(graph/rules/timing.py) at the analysed input size and the requested batch, at a grid of input and
output widths; a layer's latency at any width is interpolated in that grid. The rest of the model
(pooling, adds, activations ONNX Runtime did not fuse) is the measured whole-model latency minus the layers' sum, scaled by the
fraction of layer outputs kept. Tables are cached on disk keyed by backend, its version, the machine
and the layer shape (~/.cache/deploysparse/latency, or $DEPLOYSPARSE_CACHE).

Tables are timed by the backend's own timer (`Backend.timer`, backends/timing.py): ONNX Runtime's
runs here, TensorRT's builds one engine per layer shape and needs a GPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from deploysparse.backends import get_backend
from deploysparse.backends.timing import Timer
from deploysparse.budget import DEFAULT_ROUND_TO, Budget
from deploysparse.graph.rules import LayerShape, rule_for

GRID = (0.25, 0.5, 0.75, 1.0)  # fractions of a layer's channels timed in the table


def cache_file(backend: str, version: str) -> Path:
    """Where the tables of this backend, version and machine live."""
    from deploysparse.backends.machine import cpu_name

    root = Path(os.environ.get("DEPLOYSPARSE_CACHE") or Path.home() / ".cache" / "deploysparse")
    machine = hashlib.sha256(f"{cpu_name()}|{platform.machine()}|{platform.node()}".encode()).hexdigest()[:12]
    return root / "latency" / f"{backend}-{version}-{machine}.json"


@dataclass
class LatencyTable:
    """Measured layer latencies (ms) by LayerShape.key, persisted as JSON."""

    timer: Timer
    path: Path
    entries: dict[str, float] = field(default_factory=dict)
    measured: int = 0

    @classmethod
    def open(cls, backend: str, batch: int) -> LatencyTable:
        timer = get_backend(backend).timer(batch)
        path = cache_file(backend, timer.version())
        entries = json.loads(path.read_text()) if path.exists() else {}
        return cls(timer, path, entries)

    def latency(self, shape: LayerShape, c_in: int, c_out: int) -> float:
        """The layer's own time (ms): its one-node model minus the same model without it."""
        key = shape.key(c_in, c_out)
        if key not in self.entries:
            layer, null = (self.timer.fastest_ms(shape.model(c_in, c_out, empty)) for empty in (False, True))
            self.entries[key] = max(layer - null, 0.0)
            self.measured += 1
        return self.entries[key]

    def save(self) -> None:
        """Write the table atomically (a killed run leaves the previous one)."""
        from deploysparse.atomic import write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.path, json.dumps(self.entries, sort_keys=True))


def grid_widths(channels: int, round_to: int) -> list[int]:
    """The widths a layer is timed at: GRID fractions of `channels`, rounded up to `round_to`."""
    step = round_to if channels >= round_to else 1
    return sorted({min(channels, max(step, -(-math.ceil(f * channels) // step) * step)) for f in GRID})


@dataclass
class Layer:
    """One timed layer: its shape, the grid it was timed on, and which tensors give its widths."""

    name: str
    shape: LayerShape
    inputs: list[int]
    outputs: list[int]
    grid: np.ndarray  # (len(inputs), len(outputs)) ms
    in_tensor: str
    out_tensor: str

    def at(self, c_in: float, c_out: float) -> float:
        """Bilinear interpolation (linear extrapolation below the smallest width, floored at 0)."""
        if self.shape.depthwise:
            return max(0.0, float(np.interp(c_out, self.outputs, self.grid[0])))
        rows = np.array([np.interp(c_out, self.outputs, row) for row in self.grid])
        return max(0.0, float(np.interp(c_in, self.inputs, rows)))


class LatencyModel:
    """Predicted latency of the model for kept counts per group, from a LatencyTable."""

    def __init__(
        self, ga: Any, table: LatencyTable, whole_ms: float, round_to: int = DEFAULT_ROUND_TO
    ) -> None:
        self.ga = ga
        self.timer = table.timer
        self.backend, self.batch = table.timer.name, table.timer.batch
        self.layers = [layer for node in ga.model.graph.node if (layer := _layer(ga, node, table, round_to))]
        table.save()
        self.group_size = {g.id: g.size for g in ga.groups}
        self.shares = {
            layer.name: (_shares(ga, layer.in_tensor), _shares(ga, layer.out_tensor)) for layer in self.layers
        }
        # One-layer models pay for their own layout conversions and output copies, so on a busy CPU
        # their sum can exceed the whole model: scale the layers so that the original is predicted
        # as measured; the rest (pooling, adds, unfused activations) is what the layers do not explain.
        full_layers = sum(float(layer.grid[-1, -1]) for layer in self.layers)
        self.scale = min(1.0, whole_ms / full_layers) if full_layers > 0 else 1.0
        self.rest = max(whole_ms - self.scale * full_layers, 0.0)
        self.touches: dict[str, list[int]] = {}
        for i, layer in enumerate(self.layers):
            for part in self.shares[layer.name]:
                for gid in part:
                    self.touches.setdefault(gid, []).append(i)

    def layer_ms(self, i: int, counts: dict[str, int]) -> float:
        """Layer i's time at these counts, with its share of the rest: the rest is spread over the
        layers and shrinks with the fraction of each layer's outputs kept (the tensors the pooling,
        adds and activations around it read)."""
        layer = self.layers[i]
        ins, outs = self.shares[layer.name]
        out_width = self._width(outs, counts, layer.shape.out_channels)
        own = layer.at(self._width(ins, counts, layer.shape.in_channels), out_width)
        return self.scale * own + self.rest / len(self.layers) * out_width / layer.shape.out_channels

    def _width(self, shares: dict[str, int], counts: dict[str, int], channels: int) -> float:
        """Kept channels of a tensor: its prunable groups' channels scale with their kept fraction."""
        return channels - sum(
            n * (1 - counts.get(g, self.group_size[g]) / self.group_size[g]) for g, n in shares.items()
        )

    def predict(self, counts: dict[str, int]) -> float:
        """Milliseconds at these kept counts (groups not named keep every channel), by the table."""
        if not self.layers:
            return self.rest
        return float(sum(self.layer_ms(i, counts) for i in range(len(self.layers))))

    def measure(self, keep: dict[str, np.ndarray]) -> tuple[float, float]:
        """Original and compact latency (ms) of the model with these kept channels, timed
        alternately on the table's backend and batch. Only the structure matters for timing, so the
        compact model is cut without folding constants or merging."""
        from deploysparse.graph.surgery import rewrite_graph
        from deploysparse.plan import Plan

        compact = rewrite_graph(self.ga, Plan(keep=keep)).model
        original_ms, compact_ms = self.timer.interleaved_ms(
            [self.ga.model, compact], shapes=self.ga.input_shapes
        )
        return original_ms, compact_ms


def _layer(ga: Any, node: onnx.NodeProto, table: LatencyTable, round_to: int) -> Layer | None:
    """The timed layer of a node whose rule says what layer it times like (Rule.timing: a 2-D Conv,
    dense or depthwise, a Gemm, a 2-D MatMul with a constant weight), at the timer's batch."""
    rule = rule_for(node)
    shape = rule.timed_layer(node, ga.table) if rule is not None else None
    if shape is None:
        return None
    shape = replace(shape, batch=table.timer.batch)
    inputs, outputs = grid_widths(shape.in_channels, round_to), grid_widths(shape.out_channels, round_to)
    if shape.depthwise:
        grid = np.array([[table.latency(shape, c, c) for c in outputs]])
        inputs = outputs
    else:
        grid = np.array([[table.latency(shape, i, o) for o in outputs] for i in inputs])
    return Layer(node.name, shape, inputs, outputs, grid, node.input[0], node.output[0])


def _shares(ga: Any, tensor: str) -> dict[str, int]:
    """group id -> how many of the tensor's channels belong to it (prunable groups only)."""
    if tensor not in ga.table.base:
        return {}
    groups = ga.identity_group[ga.tensor_identities(tensor)]
    out: dict[str, int] = {}
    for index, count in zip(*np.unique(groups, return_counts=True), strict=True):
        group = ga.groups[int(index)]
        if group.prunable:
            out[group.id] = int(count)
    return out


def latency_model(ga: Any, budget: Budget) -> LatencyModel:
    """The LatencyModel of `ga` on the budget's backend and batch (tables from the cache or measured;
    the whole model timed at the analysed input shape, fastest run as for the layers)."""
    table = LatencyTable.open(budget.backend, budget.batch)
    whole_ms = table.timer.fastest_ms(ga.model, shapes=ga.input_shapes)
    return LatencyModel(ga, table, whole_ms, budget.round_to)
