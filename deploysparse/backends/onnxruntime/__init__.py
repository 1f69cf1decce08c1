"""ONNX Runtime: the default backend, because it runs everywhere (CPU wheel) and on GPUs (onnxruntime-gpu).

`build` writes what ONNX Runtime would otherwise recompute at every session start: the graph after
all of its optimisations (`optimized_model_filepath`), for fp32, fp16 (the artefact
`backends/fp16.py` writes for TensorRT too, fp32 kept where the calibration data shows fp16 fails) or int8 (static QDQ quantisation calibrated on the user's data). The QDQ model
is written too, because it is portable: TensorRT and other runtimes consume QDQ graphs directly,
while the optimised file holds CPU-specific fused kernels.

One job per module: `runtime` (importing ONNX Runtime, session options, a session's inputs),
`runner` (a deployed session), `build` (optimise, int8 QDQ, publish), `intermediates` (inner
tensors' values on data), `profiler` (per-node latency from ONNX Runtime's profiler), `backend`
(OnnxRuntimeBackend, which puts them behind the Backend interface).
"""

from deploysparse.backends.onnxruntime.backend import OnnxRuntimeBackend
from deploysparse.backends.onnxruntime.runner import OrtRunner

__all__ = ["OnnxRuntimeBackend", "OrtRunner"]
