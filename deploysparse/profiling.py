"""Where the time goes: per-node latency from ONNX Runtime's profiler, for one model or several side by side.

A whole-model speed-up says nothing about which layers earned it. ONNX Runtime's profiler records
one `<node>_kernel_time` event per node and run; this module runs the models, drops the warm-up
runs' events and reports each node's median time per run. Several models (the original, its flushed
copy, the compact one) are run interleaved, run after run, so a shared machine's load falls on all
of them alike. Rows are the source model's nodes: ONNX Runtime's optimised graph fuses a conv with
its BatchNormalization and activation (op `FusedConv`, or `Conv` in its blocked NCHWc layout, renamed
after its output) and the row is named after the conv; surgery keeps node names, so the original's
and the compact model's rows line up even when only one of them got the blocked layout.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploysparse.backends.feeds import make_feeds
from deploysparse.backends.onnxruntime import session_input_specs
from deploysparse.errors import BackendError, UsageError
from deploysparse.ort_options import session_options


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
            "model": self.model,
            "batch": self.batch,
            "runs": self.runs,
            "total_ms": self.total_ms,
            "layers": [{"node": t.node, "op": t.op, "ms": t.ms, "share": t.share} for t in self.layers],
        }


def profile_layers(
    model: str | os.PathLike[str],
    batch: int = 1,
    warmup: int = 5,
    runs: int = 20,
    threads: int | None = None,
) -> LayerProfile:
    """Per-node latency of one ONNX model on ONNX Runtime CPU (the session `bench` uses)."""
    return profile_side_by_side({str(model): model}, batch, warmup, runs, threads)[str(model)]


def profile_side_by_side(
    models: Mapping[str, str | os.PathLike[str]],
    batch: int = 1,
    warmup: int = 5,
    runs: int = 20,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, LayerProfile]:
    """Per-node latency of several models, label -> profile, their runs interleaved."""
    if warmup < 0 or runs < 1:
        raise UsageError(f"profiling needs warmup >= 0 and runs >= 1, got {warmup} and {runs}")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="deploysparse-profile-") as folder:
        sessions = {
            label: _session(Path(path), Path(folder) / f"m{i}", threads)
            for i, (label, path) in enumerate(models.items())
        }
        feeds = {
            label: make_feeds(session_input_specs(sess), batch=batch, seed=rng, source=str(models[label]))
            for label, sess in sessions.items()
        }
        for _ in range(warmup + runs):
            for label, sess in sessions.items():
                sess.run(None, feeds[label])
        return {
            label: _parse(
                Path(sess.end_profiling()), str(models[label]), batch, warmup, runs, _labeller(models[label])
            )
            for label, sess in sessions.items()
        }


def _session(path: Path, prefix: Path, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendError("per-layer profiling needs ONNX Runtime: pip install 'deploysparse[cpu]'") from exc
    if not path.exists():
        raise BackendError(f"{path}: no such model file")
    options = session_options(ort, threads, spinning=False)  # the models' runs are interleaved
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BackendError(
            f"{path}: ONNX Runtime cannot load the model ({str(exc).splitlines()[0]})"
        ) from exc


_PASS_THROUGH = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "BatchNormalization"}
_REORDERS = {"ReorderInput", "ReorderOutput"}
REORDER_ROW = "(layout reorders)"


def _labeller(path: str | os.PathLike[str]):
    """Map an optimised-graph node to the source model's node it computes, so rows line up across models.

    ONNX Runtime names a node it moved to its blocked (NCHWc) layout after its output tensor plus
    `_nchwc`; a conv fused with its activation but left in NCHW keeps the conv's name. Both are
    traced back to the conv: the tensor's producer, then through BatchNormalization and activations.
    The layout reorders ONNX Runtime inserts are pooled into one row.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    names = {node.name for node in graph.node}
    producer = {out: node for node in graph.node for out in node.output}

    def label(node: str, op: str) -> str:
        if op in _REORDERS:
            return REORDER_ROW
        if node in names or not node.endswith("_nchwc"):
            return node
        source = producer.get(node.removesuffix("_nchwc"))
        while source is not None and source.op_type in _PASS_THROUGH and source.input:
            source = producer.get(source.input[0])
        return source.name if source is not None else node

    return label


def _parse(trace: Path, model: str, batch: int, warmup: int, runs: int, label) -> LayerProfile:
    """Median kernel time per source node over the timed runs (each optimised node's first `warmup`
    events dropped; optimised nodes that compute the same source node are summed)."""
    events = json.loads(trace.read_text(encoding="utf-8"))
    durations: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name.removesuffix("_kernel_time")
        durations[node].append(float(event["dur"]) / 1e3)
        ops[node] = event.get("args", {}).get("op_name", "")
    per_row: dict[str, float] = defaultdict(float)
    row_ops: dict[str, set[str]] = defaultdict(set)
    for node, times in durations.items():
        row = label(node, ops[node])
        per_row[row] += statistics.median(times[warmup:] or times)
        row_ops[row].add(ops[node])
    layers = [LayerTime(row, "+".join(sorted(row_ops[row])), ms) for row, ms in per_row.items()]
    total = sum(layer.ms for layer in layers) or 1.0
    for layer in layers:
        layer.share = layer.ms / total
    layers.sort(key=lambda layer: -layer.ms)
    return LayerProfile(model=model, batch=batch, runs=runs, layers=layers)


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
