"""Per-node latency from ONNX Runtime's profiler (OnnxRuntimeBackend.profile).

ONNX Runtime's profiler records one `<node>_kernel_time` event per node and run; the models are run
interleaved (backends/timing.py), each optimised node's warm-up events dropped, and each node's
median time per run reported. Rows are the source model's nodes: ONNX Runtime's optimised graph
fuses a conv with its BatchNormalization and activation (op `FusedConv`, or `Conv` in its blocked
NCHWc layout, renamed after its output) and the row is named after the conv, so the original's and
the compact model's rows line up even when only one of them got the blocked layout.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

from deploysparse.backends.base import ProfileRequest
from deploysparse.backends.feeds import make_feeds
from deploysparse.backends.onnxruntime.runtime import load_onnxruntime, session_input_specs, session_options
from deploysparse.backends.timing import interleaved
from deploysparse.errors import BackendError, first_line
from deploysparse.graph.rules import kernel_node
from deploysparse.profiling import LayerProfile, LayerTime


def profile_side_by_side(request: ProfileRequest) -> dict[str, LayerProfile]:
    """Per-node latency of several ONNX models on the CPU provider, label -> profile; inputs at
    `request.shapes` (with the batch set to `request.batch`), else the models' own dims."""
    models, batch, warmup, runs = request.models, request.batch, request.warmup, request.runs
    rng = np.random.default_rng(request.seed)
    with tempfile.TemporaryDirectory(prefix="deploysparse-profile-") as folder:
        sessions = {
            label: _session(Path(path), Path(folder) / f"m{i}", request.threads)
            for i, (label, path) in enumerate(models.items())
        }
        feeds = {
            label: make_feeds(
                session_input_specs(sess), request.shapes, batch=batch, seed=rng, source=str(models[label])
            )
            for label, sess in sessions.items()
        }
        interleaved(
            [lambda _, s=sess, f=feeds[label]: s.run(None, f) for label, sess in sessions.items()],
            warmup + runs,
        )
        return {
            label: _parse(
                Path(sess.end_profiling()), str(models[label]), batch, warmup, runs, _labeller(models[label])
            )
            for label, sess in sessions.items()
        }


def _session(path: Path, prefix: Path, threads: int | None):
    """A profiling CPU session on the model file at `path`, its trace written under `prefix`."""
    ort = load_onnxruntime()
    if not path.exists():
        raise BackendError(f"{path}: no such model file")
    options = session_options(ort, threads, spinning=False)  # the models' runs are interleaved
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BackendError(f"{path}: ONNX Runtime cannot load the model ({first_line(exc)})") from exc


_REORDERS = {"ReorderInput", "ReorderOutput"}
REORDER_ROW = "(layout reorders)"
# A QDQ model's DequantizeLinear -> Conv -> QuantizeLinear runs as one QLinearConv named
# `<conv>_token_<n>`: its row is the conv's, so an int8 model's rows line up with the fp32 model's.
_FUSED_QDQ = re.compile(r"^(?P<node>.+)_token_\d+$")


def _labeller(path: str | os.PathLike[str]):
    """Map an optimised-graph node to the source model's node it computes, so rows line up across models.

    ONNX Runtime names a node it moved to its blocked (NCHWc) layout after its output tensor plus
    `_nchwc`, and a QDQ node group it fused into one integer kernel `<node>_token_<n>`; a conv fused with its activation but left in NCHW keeps the conv's name. Both are
    traced back to the conv: the tensor's producer, then through the nodes the rules say a backend
    fuses into their producer (Rule.fused_into_producer: BatchNormalization, activations).
    The layout reorders ONNX Runtime inserts are pooled into one row.
    """
    graph = onnx.load(str(path), load_external_data=False).graph
    names = {node.name for node in graph.node}
    producer = {out: node for node in graph.node for out in node.output}

    def label(node: str, op: str) -> str:
        if op in _REORDERS:
            return REORDER_ROW
        if node in names:
            return node
        fused = _FUSED_QDQ.match(node)
        if fused and fused.group("node") in names:
            return fused.group("node")
        if not node.endswith("_nchwc"):
            return node
        source = kernel_node(node.removesuffix("_nchwc"), producer)
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
