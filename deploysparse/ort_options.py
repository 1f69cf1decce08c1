"""The ONNX Runtime session options of every timed or deployed session, in one place: the
backend's runners, the per-layer profiler and the denormal timing all build theirs here.

No deploysparse imports: the backend and the modules it imports both use it.
"""

from __future__ import annotations

from typing import Any


def session_options(ort: Any, threads: int | None, *, spinning: bool = True) -> Any:
    """SessionOptions (of the imported onnxruntime module `ort`) for every session that runs a model
    as deployed: full graph optimisation, quiet logs, `threads` intra-op threads (ONNX Runtime's own
    choice when None).

    spinning=False when several sessions are timed in alternation. An idle ONNX Runtime thread spins
    for work for a while after each run, so the session that just ran steals the cores the next one
    runs on: measured on 2 cores (benchmarks/spinning.py), MobileNetV2 at batch 8 timed run by run
    against its compact model read 0.62-0.76 of the original's latency with spinning and 0.59-0.64
    without, 0.55-0.59 with each model timed alone (docs/benchmarks.md). A deployment runs one
    session, where spinning is the faster default.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options
