"""Backends: the runtimes a compact model is built for and run on, behind one interface (base.Backend).

Each backend lives in its own module and is imported only when asked for, so `deploysparse` works
without TensorRT installed and does not pay ONNX Runtime's import time for commands that never run
a model.
"""

from __future__ import annotations

import importlib

from deploysparse.backends.base import Backend, BuildResult, Runner, parse_shapes
from deploysparse.errors import UsageError

# The backend that runs an ONNX model as it is: the reference `validate` compares with, and where
# the analysis, the dead-filter check and the criteria read intermediate tensors.
REFERENCE_BACKEND = "onnxruntime"

# name -> (module, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("deploysparse.backends.onnxruntime", "OnnxRuntimeBackend"),
    "tensorrt": ("deploysparse.backends.tensorrt", "TensorRTBackend"),
}


def get_backend(name: str) -> Backend:
    """The backend called `name` ("onnxruntime" or "tensorrt"); UsageError for anything else."""
    entry = BACKENDS.get(name)
    if entry is None:
        raise UsageError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module_name, class_name = entry
    return getattr(importlib.import_module(module_name), class_name)()


__all__ = ["BACKENDS", "Backend", "BuildResult", "Runner", "get_backend", "parse_shapes"]
