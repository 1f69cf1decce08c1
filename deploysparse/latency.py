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

Building tables is pluggable: `TABLE_BUILDERS` maps a backend name to a LayerTimer; ONNX Runtime's
runs here, TensorRT's builds one engine per layer shape through the TensorRT backend and needs a GPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from deploysparse.budget import DEFAULT_ROUND_TO, Budget
from deploysparse.errors import UsageError
from deploysparse.graph.rules import LayerShape, rule_for
from deploysparse.modelio import save_model

GRID = (0.25, 0.5, 0.75, 1.0)  # fractions of a layer's channels timed in the table
WARMUP, ITERS = 2, 7
PAIR_RUNS = 11  # alternating runs of original and compact each when the compact model is measured


class LayerTimer:
    """Times one-layer models on a backend: `milliseconds(model_path, feeds)` -> a robust latency."""

    backend = "onnxruntime"

    def __init__(self, batch: int) -> None:
        from deploysparse.backends import get_backend

        self.batch = batch
        self.engine = get_backend(self.backend)

    def version(self) -> str:
        return self.engine.version()

    @contextlib.contextmanager
    def open(self, path: Path, spinning: bool = True) -> Iterator[Any]:
        """A runner of the backend for one model file (spinning: Backend.runner's)."""
        with self.engine.runner(path, spinning=spinning) as runner:
            yield runner

    def milliseconds(self, path: Path, feeds: dict[str, np.ndarray]) -> float:
        """The fastest of ITERS runs after WARMUP: the least disturbed by other work on the machine."""
        with self.open(path) as runner:
            return fastest_run(lambda: runner.run(feeds))

    def pair(self, first: Path, second: Path, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
        """Median latency (ms) of two models timed run by run in alternating order: a change of the
        machine's load hits both alike, and the median ignores the runs it disturbed most."""
        with self.open(first, spinning=False) as a, self.open(second, spinning=False) as b:
            for _ in range(WARMUP):
                a.run(feeds)
                b.run(feeds)
            times: dict[int, list[float]] = {0: [], 1: []}
            for i in range(PAIR_RUNS):
                for which in (i % 2, 1 - i % 2):
                    runner = (a, b)[which]
                    start = time.perf_counter()
                    runner.run(feeds)
                    times[which].append(time.perf_counter() - start)
        return float(np.median(times[0])) * 1e3, float(np.median(times[1])) * 1e3


class TensorRTTimer(LayerTimer):
    """The TensorRT backend builds an FP16 engine per model and times it (needs TensorRT and a GPU)."""

    backend = "tensorrt"

    @contextlib.contextmanager
    def open(self, path: Path, spinning: bool = True) -> Iterator[Any]:
        built = self.engine.build(path, path.parent / (path.stem + "-engine"), precision="fp16")
        with self.engine.runner(built.artifact, spinning=spinning) as runner:
            yield runner


TABLE_BUILDERS: dict[str, type[LayerTimer]] = {"onnxruntime": LayerTimer, "tensorrt": TensorRTTimer}


def fastest_run(run: Callable[[], Any]) -> float:
    for _ in range(WARMUP):
        run()
    best = math.inf
    for _ in range(ITERS):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def cache_file(backend: str, version: str) -> Path:
    """Where the tables of this backend, version and machine live."""
    from deploysparse.backends.base import cpu_name

    root = Path(os.environ.get("DEPLOYSPARSE_CACHE") or Path.home() / ".cache" / "deploysparse")
    machine = hashlib.sha256(f"{cpu_name()}|{platform.machine()}|{platform.node()}".encode()).hexdigest()[:12]
    return root / "latency" / f"{backend}-{version}-{machine}.json"


@dataclass
class LatencyTable:
    """Measured layer latencies (ms) by LayerShape.key, persisted as JSON."""

    timer: LayerTimer
    path: Path
    entries: dict[str, float] = field(default_factory=dict)
    measured: int = 0

    @classmethod
    def open(cls, backend: str, batch: int) -> LatencyTable:
        builder = TABLE_BUILDERS.get(backend)
        if builder is None:
            raise UsageError(
                f"--backend {backend}: no latency table builder; choose {', '.join(TABLE_BUILDERS)}"
            )
        timer = builder(batch)
        path = cache_file(backend, timer.version())
        entries = json.loads(path.read_text()) if path.exists() else {}
        return cls(timer, path, entries)

    def latency(self, shape: LayerShape, c_in: int, c_out: int) -> float:
        """The layer's own time (ms): its one-node model minus the same model without it."""
        key = shape.key(c_in, c_out)
        if key not in self.entries:
            with tempfile.TemporaryDirectory(prefix="deploysparse-latency-") as folder:
                feeds = {
                    "x": np.random.default_rng(0).standard_normal(shape.in_shape(c_in)).astype(np.float32)
                }
                times = []
                for null in (False, True):
                    path = Path(folder) / f"layer{int(null)}.onnx"
                    onnx.save(shape.model(c_in, c_out, null), path)
                    times.append(self.timer.milliseconds(path, feeds))
                self.entries[key] = max(times[0] - times[1], 0.0)
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
        self.backend, self.batch = table.timer.backend, table.timer.batch
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
        return measured_pair(self.ga.model, compact, self.timer, self.ga.input_shapes)


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


def whole_model_ms(model: onnx.ModelProto, timer: LayerTimer, input_shapes: dict[str, list[int]]) -> float:
    """The whole model's latency at the timer's batch (fastest run, as for the layers)."""
    with tempfile.TemporaryDirectory(prefix="deploysparse-latency-") as folder:
        path = save_model(model, Path(folder) / "model.onnx")
        return timer.milliseconds(path, _random_feeds(timer.batch, input_shapes))


def _random_feeds(batch: int, input_shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        name: rng.standard_normal([batch, *shape[1:]]).astype(np.float32)
        for name, shape in input_shapes.items()
    }


def latency_model(ga: Any, budget: Budget) -> LatencyModel:
    """The LatencyModel of `ga` on the budget's backend and batch (tables from the cache or measured)."""
    table = LatencyTable.open(budget.backend, budget.batch)
    return LatencyModel(ga, table, whole_model_ms(ga.model, table.timer, ga.input_shapes), budget.round_to)


def measured_pair(
    original: onnx.ModelProto,
    compact: onnx.ModelProto,
    timer: LayerTimer,
    input_shapes: dict[str, list[int]],
) -> tuple[float, float]:
    """Original and compact latency (ms), timed run by run in alternating order (LayerTimer.pair)."""
    with tempfile.TemporaryDirectory(prefix="deploysparse-latency-") as folder:
        first = save_model(original, Path(folder) / "original.onnx")
        second = save_model(compact, Path(folder) / "compact.onnx")
        return timer.pair(first, second, _random_feeds(timer.batch, input_shapes))
