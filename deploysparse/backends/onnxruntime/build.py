"""The steps of an ONNX Runtime build: optimise, convert to fp16, quantise to int8 QDQ, publish.

`quantize_qdq` is the one-call QDQ quantiser (TensorRT's zero-point-0 scheme by default); the
measured int8 build of ONNX Runtime itself is `int8.build_int8`.

ONNX Runtime's optimiser and quantiser resolve external data against folders of their own (temporary
ones included), so the backend runs them on a copy staged in a private folder, and `publish` re-reads
each result with its weights and writes it where it belongs, with its own data file beside it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from deploysparse.backends.onnxruntime import quantizer
from deploysparse.backends.onnxruntime.quantizer import Quantized
from deploysparse.backends.onnxruntime.runtime import load_onnxruntime
from deploysparse.backends.quantize import TENSORRT, QuantScheme
from deploysparse.calibration import InputSpec, batches, sample_count
from deploysparse.errors import BackendError, CalibrationError, first_line
from deploysparse.modelio import external_data_files, load_model, needs_external_data, save_model

CALIBRATION_BATCH = 32


def optimize(source: Path, target: Path, providers: list[str]) -> list[str]:
    """Let ONNX Runtime apply every graph optimisation once and save the result to `target`; return
    the providers the session got."""
    ort = load_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.optimized_model_filepath = str(target)
    if external_data_files(source):
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", target.name + ".data"
        )
    try:
        session = ort.InferenceSession(str(source), options, providers=providers)
    except Exception as exc:
        raise BackendError(f"{source}: ONNX Runtime cannot optimise the model ({first_line(exc)})") from exc
    return session.get_providers()


def convert_fp16(model: onnx.ModelProto, target: Path) -> Path:
    """The fp16 model (inputs and outputs stay fp32), written to `target`."""
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise BackendError(
            "fp16 on ONNX Runtime needs the onnxconverter-common package (pip install onnxconverter-common); "
            "or build fp16 with --backend tensorrt on a GPU"
        ) from exc
    try:
        with warnings.catch_warnings():  # one warning per weight below fp16's range: noise
            warnings.simplefilter("ignore")
            converted = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:
        raise BackendError(f"fp16 conversion failed ({first_line(exc)})") from exc
    return save_model(converted, target, external_data=needs_external_data(converted))


def quantize_qdq(
    source: Path,
    specs: list[InputSpec],
    feeds: dict[str, np.ndarray],
    target: Path,
    scheme: QuantScheme = TENSORRT,
) -> Quantized:
    """`source` as a static QDQ model in `scheme`, calibrated on `feeds`, written to `target` (scratch
    files beside it): prepare (opset 13 where per-channel weights need it), calibrate, quantise.

    The default is TensorRT's scheme: symmetric int8 activations and per-channel int8 weights, zero
    point 0 everywhere. ONNX Runtime's own int8 build picks its scheme per CPU and measures its
    choices (`onnxruntime/int8.py`); this is the one-call form for a backend that only needs the QDQ
    model. The result says which scheme was applied (per-tensor weights where the opset stays below 13).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    batches = calibration_batches(specs, feeds, source)
    prepared = quantizer.prepare(source, target.with_name("prepared.onnx"), batches, scheme.per_channel)
    ranges = quantizer.calibrate(
        prepared, batches, scheme.calibration, scheme.symmetric, target.with_name("ranges.json")
    )
    return quantizer.quantize(prepared, ranges, scheme, target)


def publish(staged: Path, target: Path, external: bool) -> Path:
    """Re-read a model ONNX Runtime wrote in the staging folder and write it self-contained at `target`."""
    return save_model(load_model(staged), target, external_data=external or None)


def calibration_batches(
    specs: list[InputSpec], feeds: Mapping[str, np.ndarray], source: Path
) -> list[dict[str, np.ndarray]]:
    """`feeds` in batches of CALIBRATION_BATCH, or of the model's static batch when it has one (it
    cannot run any other size)."""
    batch_dim = specs[0].batch_dim
    if not isinstance(batch_dim, int):
        return list(batches(feeds, CALIBRATION_BATCH))
    full = [b for b in batches(feeds, batch_dim) if sample_count(b) == batch_dim]
    if not full:
        raise CalibrationError(
            f"{source}: the model has a static batch of {batch_dim} but the calibration data holds only "
            f"{sample_count(feeds)} samples"
        )
    return full
