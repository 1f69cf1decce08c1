"""ONNX Runtime: the default backend, because it runs everywhere (CPU wheel) and on GPUs (onnxruntime-gpu).

`build` writes what ONNX Runtime would otherwise recompute at every session start: the graph after
all of its optimisations (`optimized_model_filepath`), for fp32, fp16 (the artefact `backends/fp16.py`
writes for TensorRT too, fp32 kept where the calibration data shows fp16 fails) or int8 (static QDQ
quantisation calibrated on the user's data, in the scheme this CPU runs fastest, measured against
fp32). The QDQ model is written too, because it is portable to CPUs of the same kind, while the
optimised file holds CPU-specific fused kernels; TensorRT reads QDQ with zero points of 0
(`build.quantize_qdq`'s default scheme).

One job per module: `runtime` (importing ONNX Runtime, session options, a session's inputs),
`runner` (a deployed session), `build` (optimise, quantize_qdq, publish), `quantizer` (prepare,
calibrate, quantise: ONNX Runtime's quantiser in steps a build repeats cheaply), `int8` (the int8
build decided by measurement), `intermediates` (inner tensors' values on data), `profiler` (per-node
latency from ONNX Runtime's profiler), `backend` (OnnxRuntimeBackend, which puts them behind the
Backend interface).
"""

from deploysparse.backends.onnxruntime.backend import OnnxRuntimeBackend
from deploysparse.backends.onnxruntime.runner import OrtRunner

__all__ = ["OnnxRuntimeBackend", "OrtRunner"]
