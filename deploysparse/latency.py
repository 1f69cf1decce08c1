"""Latency budgets: a per-layer latency table measured on the target backend, and the allocation that
keeps the most important channels under a latency target (HALP, Shen et al. NeurIPS 2022).

FLOPs fall faster than latency: a conv with 61 channels runs no faster than one with 64, memory-bound
layers barely shrink, and the first layers cost more per MAC than the last. So the budget asks the
backend. Every Conv (2-D), Gemm and MatMul of the model is timed on its own, as a one-node ONNX model
at the analysed input size and the requested batch, at a grid of input and output widths; a layer's
latency at any width is interpolated in that grid. The rest of the model (pooling, adds, activations
ONNX Runtime did not fuse) is the measured whole-model latency minus the layers' sum, scaled by the
fraction of layer outputs kept. Tables are cached on disk keyed by backend, its version, the machine
and the layer shape (~/.cache/deploysparse/latency, or $DEPLOYSPARSE_CACHE).

Two allocations choose where to cut, each group at one of its legal counts (honouring --round-to,
--min-channels, pinned channels). The default, "threshold", is the --flops-target ranking walked by
predicted latency: one global threshold on the criterion's scores, the lowest that the prediction
meets (budget.ThresholdPath). "knapsack" keeps the most importance (the sum of the kept channels'
scores) under the predicted latency, as HALP does: a greedy pass (repeatedly the step that loses the
least importance per millisecond saved) gives a feasible start; then the multiple-choice knapsack is
solved exactly by dynamic programming on the latency model linearised around the current answer,
and re-linearised around each answer (a layer's time depends on two groups' widths). The knapsack
needs scores that compare across layers (HALP's are loss-based Taylor scores); this package's are
normalised by their group's mean, so every channel is worth about 1 to it and it strips the layers
where a channel costs the most time. Measured on digits-trained MobileNetV2 and ResNet-50 at equal
predicted latency, it kept less accuracy than the threshold (docs/benchmarks.md), so it is opt-in.

Then it is measured, as NetAdapt (Yang et al. ECCV 2018) does: one-layer models miss what layers
share inside the whole graph (layout conversions, fused activations, cache reuse), so the table's
savings can be off, and by more at some widths than at others. The compact model of the
allocation is built and timed against the original, run by run; when it misses the target by more
than TOLERANCE, the allocation runs again aimed at the table fraction that the measurements so far map
to the target (a secant step on a monotone calibration curve, `Calibration`), at most CORRECTIONS
times. The prediction reported for the final plan is the calibrated one made before it was measured.

Tables are timed by the backend's own timer (`Backend.timer`, backends/timing.py): ONNX Runtime's
runs here, TensorRT's builds one engine per layer shape and needs a GPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploysparse.backends import get_backend
from deploysparse.backends.timing import Timer
from deploysparse.budget import (
    DEFAULT_ROUND_TO,
    Allocation,
    Budget,
    GroupBudget,
    ThresholdPath,
    finish,
    first_met,
    group_budgets,
)
from deploysparse.graph.rules import attr

GRID = (0.25, 0.5, 0.75, 1.0)  # fractions of a layer's channels timed in the table
CORRECTIONS = 4  # re-allocations after measuring the compact model
TOLERANCE = 0.05  # a measured latency within 5% of the target needs no correction
GAIN_LIMITS = (0.5, 2.0)  # measured savings per table saving below the lowest measurement: clamped
KNAPSACK_BINS = 10_000  # the exact knapsack's latency resolution: 1/10,000 of the room to spend
EXACT_ROUNDS = 3  # linearisations of the latency model around the knapsack's last answer


@dataclass(frozen=True)
class LayerShape:
    """What decides one layer's latency besides its channel counts."""

    op: str  # "conv" or "dense"
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    depthwise: bool = False
    spatial: tuple[int, ...] = ()
    batch: int = 1

    def key(self, c_in: int, c_out: int) -> str:
        return json.dumps(
            [
                self.op,
                c_in,
                c_out,
                self.kernel,
                self.strides,
                self.pads,
                self.dilations,
                self.depthwise,
                self.spatial,
                self.batch,
            ]
        )

    def model(self, c_in: int, c_out: int, null: bool = False) -> onnx.ModelProto:
        """A one-node ONNX model of this layer with c_in inputs and c_out outputs (random weights).

        null: the same inputs and outputs without the layer (the output is a broadcast constant): what
        a session run costs around the layer (feeding, allocating and copying), subtracted from it."""
        rng = np.random.default_rng(0)
        if self.op == "dense":
            weight = rng.standard_normal((c_out, c_in)).astype(np.float32)
            node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
            x_shape, y_shape = [self.batch, c_in], [self.batch, c_out]
        else:
            group = c_in if self.depthwise else 1
            c_out = c_in if self.depthwise else c_out
            weight = rng.standard_normal((c_out, c_in // group, *self.kernel)).astype(np.float32)
            node = helper.make_node(
                "Conv",
                ["x", "w", "b"],
                ["y"],
                strides=list(self.strides),
                pads=list(self.pads),
                dilations=list(self.dilations),
                group=group,
            )
            x_shape, y_shape = [self.batch, c_in, *self.spatial], None
        bias = np.zeros(c_out, np.float32)
        if null:
            out_shape = self.out_shape(c_in, c_out)
            node = helper.make_node("Expand", ["b0", "s"], ["y"])
            extra = [
                numpy_helper.from_array(np.zeros(1, np.float32), "b0"),
                numpy_helper.from_array(np.array(out_shape, np.int64), "s"),
            ]
            graph = helper.make_graph(
                [node, helper.make_node("Identity", ["x"], ["x_out"])],
                "null",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                [
                    helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape),
                    helper.make_tensor_value_info("x_out", TensorProto.FLOAT, x_shape),
                ],
                extra,
            )
            return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        graph = helper.make_graph(
            [node],
            "layer",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
            [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    def out_shape(self, c_in: int, c_out: int) -> list[int]:
        if self.op == "dense":
            return [self.batch, c_out]
        c_out = c_in if self.depthwise else c_out
        spatial = []
        for i, size in enumerate(self.spatial):
            span = (self.kernel[i] - 1) * self.dilations[i] + 1
            spatial.append(
                (size + self.pads[i] + self.pads[i + len(self.spatial)] - span) // self.strides[i] + 1
            )
        return [self.batch, c_out, *spatial]


def cache_file(backend: str, version: str) -> Path:
    """Where the tables of this backend, version and machine live."""
    from deploysparse.backends.base import cpu_name

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
    """The timed layer for a Conv (2-D, dense or depthwise), Gemm or 2-D MatMul with a constant weight."""
    if len(node.input) < 2 or node.input[1] not in ga.weights:
        return None
    weight = ga.weights[node.input[1]]
    x_shape = ga.shapes.get(node.input[0])
    if x_shape is None:
        return None
    batch = table.timer.batch
    if node.op_type == "Conv" and weight.ndim == 4 and len(x_shape) == 4:
        group = attr(node, "group", 1)
        c_in, c_out = int(x_shape[1]), int(weight.shape[0])
        depthwise = group == c_in == c_out
        if group != 1 and not depthwise:
            return None
        auto_pad = attr(node, "auto_pad", b"NOTSET")
        if auto_pad not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            return None
        shape = LayerShape(
            "conv",
            c_in,
            c_out,
            tuple(weight.shape[2:]),
            tuple(attr(node, "strides", [1, 1])),
            tuple(attr(node, "pads", [0, 0, 0, 0])),
            tuple(attr(node, "dilations", [1, 1])),
            depthwise,
            tuple(int(d) for d in x_shape[2:]),
            batch,
        )
    elif node.op_type == "Gemm" and len(x_shape) == 2 and not attr(node, "transA", 0):
        c_in = int(x_shape[1])
        c_out = int(weight.shape[0] if attr(node, "transB", 0) else weight.shape[1])
        shape = LayerShape("dense", c_in, c_out, batch=batch)
    elif node.op_type == "MatMul" and len(x_shape) == 2 and weight.ndim == 2:
        shape = LayerShape("dense", int(x_shape[1]), int(weight.shape[1]), batch=batch)
    else:
        return None
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


def allocate_latency(
    groups: list[Any],
    scores: dict[str, np.ndarray | None],
    budget: Budget,
    model: LatencyModel,
    dead: dict[str, np.ndarray] | None = None,
) -> Allocation:
    """Meet budget.latency_target x the original's latency: the budget's allocation (threshold or
    knapsack) on the table's prediction, then (when the model can measure) the compact model timed
    and the allocation run again, aimed at the table fraction the measurements so far map to the
    target (Calibration), while the measurement misses. Of the measured allocations the one kept is
    the most important one that met the target (within TOLERANCE), or else the fastest: a
    measurement a busy machine disturbed cannot make the answer worse."""
    budgets = [b for b in group_budgets(groups, scores, budget, dead) if b.scores is not None or b.dead.any()]
    loss = {b.group.id: _sorted_scores(b) for b in budgets}  # before ThresholdPath ranks the scores
    counts_for = _allocator(budget.latency_allocation, budgets, loss, model)
    original = model.predict({})
    calibration = Calibration()
    aim = budget.latency_target
    tried: list[tuple[LatencyAllocation, dict[str, int]]] = []
    history: list[str] = []
    while True:
        counts = counts_for(aim)
        table_fraction = model.predict(counts) / original
        allocation = LatencyAllocation(
            predicted_ms=calibration.fraction(table_fraction) * original,
            original_ms=original,
            corrections=len(calibration.points),
        )
        finish(allocation, budgets, counts, budget.round_to)
        tried.append((allocation, counts))
        measure = getattr(model, "measure", None)
        if measure is None:
            break
        allocation.measured_original_ms, allocation.measured_ms = measure(allocation.keep)
        fraction = allocation.measured_ms / allocation.measured_original_ms
        calibration.points.append((table_fraction, fraction))
        if abs(fraction / budget.latency_target - 1.0) <= TOLERANCE or len(calibration.points) > CORRECTIONS:
            break
        history.append(
            f"--latency-target {budget.latency_target}: predicted {allocation.predicted_ms / original:.1%}, "
            f"measured {fraction:.1%} of the original; recalibrated the table and allocated again"
        )
        aim = calibration.table_fraction(budget.latency_target)
    allocation = _best_measured(tried, loss, budget.latency_target)
    allocation.notes[:0] = history
    allocation.notes.append(
        f"--latency-target {budget.latency_target}: predicted {allocation.predicted_ms:.3g} ms of "
        f"{original:.3g} ms ({allocation.predicted_ms / original:.1%}) on {model.backend} at batch {model.batch}"
    )
    if allocation.predicted_ms > budget.latency_target * original * 1.02:
        allocation.notes.append(
            "latency target not reached under the constraints (pinned, --min-channels, --round-to)"
        )
    return allocation


@dataclass
class Calibration:
    """What the table's predicted fraction of the original's latency turned out to be, measured.

    A monotone piecewise-linear map through the measurements and (1, 1) (nothing removed: the
    original); below the lowest measurement, the table's savings scaled by that measurement's ratio
    of measured to predicted savings (clamped to GAIN_LIMITS). With no measurement it is the
    identity. Aiming the allocation at `table_fraction(target)` is a secant step towards the target,
    interpolated once a measurement lies on each side of it."""

    points: list[tuple[float, float]] = field(default_factory=list)  # (table fraction, measured fraction)

    def _curve(self) -> tuple[np.ndarray, np.ndarray, float]:
        table, measured = map(np.asarray, zip(*sorted([(1.0, 1.0), *self.points]), strict=True))
        # A disturbed reading must not make it non-monotone, nor a compact model slower than the
        # original (a tiny model's microseconds: thread wake-ups outweigh the work removed).
        measured = np.minimum(np.maximum.accumulate(measured), 1.0)
        lowest_saving = 1.0 - table[0]
        gain = (1.0 - measured[0]) / lowest_saving if lowest_saving > 0 else 1.0
        return table, measured, min(max(gain, GAIN_LIMITS[0]), GAIN_LIMITS[1])

    def fraction(self, table_fraction: float) -> float:
        """The measured fraction the table's `table_fraction` stands for."""
        table, measured, gain = self._curve()
        if table_fraction >= table[0]:
            return float(np.interp(table_fraction, table, measured))
        return float(measured[0] - gain * (table[0] - table_fraction))

    def table_fraction(self, fraction: float) -> float:
        """The table fraction to aim at for a measured `fraction` (the inverse of `fraction`)."""
        table, measured, gain = self._curve()
        if fraction >= measured[0]:
            return float(np.interp(fraction, measured, table))
        return max(float(table[0] - (measured[0] - fraction) / gain), 0.0)


def _best_measured(
    tried: list[tuple[LatencyAllocation, dict[str, int]]], loss: dict[str, np.ndarray], target: float
) -> LatencyAllocation:
    """The most important allocation measured within TOLERANCE of the target, else the fastest one
    measured (the last one when none was measured)."""
    timed = [(a, c) for a, c in tried if a.measured_ms is not None and a.measured_original_ms]
    if not timed:
        return tried[-1][0]
    met = [(a, c) for a, c in timed if a.measured_ms / a.measured_original_ms <= target * (1 + TOLERANCE)]
    if met:
        return max(met, key=lambda pair: _kept_value(loss, pair[1]))[0]
    return min(timed, key=lambda pair: pair[0].measured_ms / pair[0].measured_original_ms)[0]


def _kept_value(loss: dict[str, np.ndarray], counts: dict[str, int]) -> float:
    """Importance kept: the sum of each group's `counts[g]` highest scores."""
    return sum(float(loss[g][:n].sum()) for g, n in counts.items() if g in loss)  # loss: sorted, descending


def _allocator(
    kind: str, budgets: list[GroupBudget], loss: dict[str, np.ndarray], model: LatencyModel
) -> Callable[[float], dict[str, int]]:
    """Kept counts per group for a fraction of the original's predicted latency to aim at, by the
    allocation `kind` (Budget.latency_allocation)."""
    if kind == "knapsack":
        return lambda aim: _knapsack(budgets, loss, aim, model)
    path = ThresholdPath(budgets)
    return lambda aim: _on_threshold_path(path, aim, model)


def _on_threshold_path(path: ThresholdPath, target: float, model: LatencyModel) -> dict[str, int]:
    """The plan on the global-threshold path with the lowest threshold whose prediction meets
    target x the original's (the last step when none does)."""
    limit = target * model.predict({})
    return path.counts(first_met(lambda step: model.predict(path.counts(step)) - limit, len(path)))


def _knapsack(
    budgets: list[GroupBudget], loss: dict[str, np.ndarray], target: float, model: LatencyModel
) -> dict[str, int]:
    """Kept counts per group that keep the most importance while the prediction meets target x the
    original's: the greedy's answer, improved by the exact knapsack around it."""
    limit = target * model.predict({})
    counts = _greedy(budgets, loss, limit, model)
    return _exact(budgets, loss, limit, model, counts)


def _greedy(
    budgets: list[GroupBudget], loss: dict[str, np.ndarray], limit: float, model: LatencyModel
) -> dict[str, int]:
    """From every group at its largest legal count (dead channels gone), take the step that loses the
    least importance per millisecond saved until the prediction is at most `limit`."""
    counts = {b.group.id: b.snap(b.wanted_at(-np.inf)) for b in budgets}
    now = model.predict(counts)
    while now > limit:
        best, best_ratio = None, math.inf
        for b in budgets:
            gid = b.group.id
            lower = b.legal[b.legal < counts[gid]]
            if b.scores is None or not lower.size:
                continue
            new = int(lower[-1])
            saved = _saved(model, counts, gid, new)
            if saved <= 0:
                continue
            lost = float(loss[gid][new : counts[gid]].sum())
            if lost / saved < best_ratio:
                best, best_ratio = (gid, new), lost / saved
        if best is None:
            break
        counts[best[0]] = best[1]
        now = model.predict(counts)
    return counts


def _exact(
    budgets: list[GroupBudget],
    loss: dict[str, np.ndarray],
    limit: float,
    model: LatencyModel,
    counts: dict[str, int],
) -> dict[str, int]:
    """The multiple-choice knapsack solved exactly by dynamic programming (as HALP's solver does),
    on the latency model linearised at `counts`: each group's latency at each legal count with the
    other groups held where they are. A layer reads two groups' widths, so the linearisation is
    redone around each answer (EXACT_ROUNDS times); an answer is taken only if the full model
    predicts it within `limit` and it keeps more importance than the best so far. Costs are rounded
    up to 1/KNAPSACK_BINS of the room, so the linearised answer never exceeds it."""
    choosers = [b for b in budgets if b.scores is not None and b.legal.size > 1]
    kept = {b.group.id: np.concatenate([[0.0], np.cumsum(loss[b.group.id])]) for b in budgets}
    best = dict(counts) if model.predict(counts) <= limit else None
    current = dict(counts)
    for _ in range(EXACT_ROUNDS):
        if not choosers:
            break
        deltas, values = [], []
        for b in choosers:
            gid = b.group.id
            now = _touched_ms(model, current, gid)
            delta = [_touched_ms(model, {**current, gid: int(c)}, gid) - now for c in b.legal]
            deltas.append(np.asarray(delta))
            values.append(kept[gid][np.minimum(b.legal, len(kept[gid]) - 1)])
        room = limit - model.predict(current) - sum(float(d.min()) for d in deltas)
        if room <= 0:
            break
        unit = room / KNAPSACK_BINS
        costs = [np.ceil((d - d.min()) / unit - 1e-9).astype(np.int64) for d in deltas]
        picks = _solve(costs, values, KNAPSACK_BINS)
        current = {**current, **{b.group.id: int(b.legal[k]) for b, k in zip(choosers, picks, strict=True)}}
        if model.predict(current) <= limit and (
            best is None or _kept_value(loss, current) > _kept_value(loss, best)
        ):
            best = dict(current)
    return best if best is not None else counts


def _solve(costs: list[np.ndarray], values: list[np.ndarray], capacity: int) -> list[int]:
    """Multiple-choice knapsack: one option per group, total integer cost <= capacity, most value.
    Dynamic programming over capacities; returns each group's option index."""
    best = np.zeros(capacity + 1)  # best value at total cost <= w, no group chosen yet
    choice = np.zeros((len(costs), capacity + 1), dtype=np.int64)
    for g, (cost, value) in enumerate(zip(costs, values, strict=True)):
        new = np.full(capacity + 1, -np.inf)
        for option, (c, v) in enumerate(zip(cost, value, strict=True)):
            if c > capacity:
                continue
            candidate = np.full(capacity + 1, -np.inf)
            candidate[c:] = best[: capacity + 1 - c] + v
            better = candidate > new
            new[better] = candidate[better]
            choice[g, better] = option
        best = new
    picks, w = [], capacity
    for g in range(len(costs) - 1, -1, -1):
        option = int(choice[g, w])
        picks.append(option)
        w -= int(costs[g][option])
    return picks[::-1]


@dataclass
class LatencyAllocation(Allocation):
    """An allocation with the latency the table predicts for it and for the original (ms)."""

    predicted_ms: float = 0.0
    original_ms: float = 0.0
    measured_ms: float | None = None  # the compact model of this allocation, timed (LatencyModel.measure)
    measured_original_ms: float | None = None
    corrections: int = 0  # how many times the table was recalibrated before this allocation


def _sorted_scores(b: GroupBudget) -> np.ndarray:
    """Scores of the live and pinned channels, most important first: keeping k costs the tail."""
    scores = b.scores if b.scores is not None else np.zeros(b.group.size)
    kept = ~b.dead
    return np.sort(np.asarray(scores, dtype=np.float64)[kept])[::-1]


def _touched_ms(model: LatencyModel, counts: dict[str, int], gid: str) -> float:
    """Predicted milliseconds of the layers whose widths group `gid` sets, at these counts."""
    return sum(model.layer_ms(i, counts) for i in model.touches.get(gid, []))


def _saved(model: LatencyModel, counts: dict[str, int], gid: str, new: int) -> float:
    return _touched_ms(model, counts, gid) - _touched_ms(model, {**counts, gid: new}, gid)


def latency_model(ga: Any, budget: Budget) -> LatencyModel:
    """The LatencyModel of `ga` on the budget's backend and batch (tables from the cache or measured;
    the whole model timed at the analysed input shape, fastest run as for the layers)."""
    table = LatencyTable.open(budget.backend, budget.batch)
    whole_ms = table.timer.fastest_ms(ga.model, shapes=ga.input_shapes)
    return LatencyModel(ga, table, whole_ms, budget.round_to)
