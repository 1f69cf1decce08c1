"""ONNX Runtime itself: importing it, the session options of every timed or deployed session, and
the inputs a session declares. The runner, the intermediates, the profiler and the build all take
theirs here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deploysparse.calibration import InputSpec
from deploysparse.errors import BackendError

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def load_onnxruntime() -> Any:
    """onnxruntime, with its default logger at ERROR: its coloured warning lines (unused
    initializers, fused nodes) are not ours to print. A broken install is told apart from a missing one."""
    try:
        import onnxruntime
    except ImportError as exc:
        if exc.name == "onnxruntime":
            raise BackendError(
                "ONNX Runtime is not installed: pip install 'deploysparse[cpu]' (or [gpu] for onnxruntime-gpu)"
            ) from exc
        raise BackendError(f"ONNX Runtime is installed but cannot be imported ({exc})") from exc
    onnxruntime.set_default_logger_severity(3)
    return onnxruntime


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


def session_input_specs(session: Any) -> list[InputSpec]:
    """The inputs of an InferenceSession as InputSpecs (an unknown element type reads as float32)."""
    return [
        InputSpec(
            i.name,
            tuple(d if isinstance(d, int) else (d or None) for d in i.shape),
            np.dtype(_ORT_TYPES.get(i.type, np.float32)),
        )
        for i in session.get_inputs()
    ]
