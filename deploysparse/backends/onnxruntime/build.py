"""The steps of an ONNX Runtime build: optimise, quantise to int8 QDQ, publish (fp16: backends/fp16.py).

ONNX Runtime's optimiser and quantiser resolve external data against folders of their own (temporary
ones included), so the backend runs them on a copy staged in a private folder, and `publish` re-reads
each result with its weights and writes it where it belongs, with its own data file beside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from deploysparse import progress
from deploysparse.backends.onnxruntime.runtime import load_onnxruntime
from deploysparse.calibration import InputSpec, batches, sample_count
from deploysparse.errors import BackendError, CalibrationError, first_line
from deploysparse.modelio import external_data_files, load_model, save_model

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


def quantize_qdq(source: Path, specs: list[InputSpec], feeds: dict[str, np.ndarray], target: Path) -> Path:
    """Static QDQ quantisation: symmetric int8 (zero point 0, as TensorRT requires), per-channel weights.

    Weights use 7 of the 8 bits (`reduce_range`). x86 CPUs without VNNI (AVX2, AVX-512 before
    Cascade Lake) multiply int8 pairs into 16-bit sums that saturate, so full-range weights lose
    accuracy there, at random: measured on an AVX2 EPYC, a digits CNN kept 0.980 top-1 with 7-bit
    weights and 0.942 with 8-bit (fp32: 0.980; tests/test_backends_ort.py). The artifact may run on
    another CPU than the one that built it, so the safe range is the default everywhere.
    """
    load_onnxruntime()  # quieten ONNX Runtime's logger before quantisation opens its sessions
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    calibration = _calibration_batches(specs, feeds, source)

    class _Reader(CalibrationDataReader):
        def __init__(self, advance) -> None:
            self._batches: Iterator[dict[str, np.ndarray]] = iter(calibration)
            self._advance = advance

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._batches, None)
            if item is not None:
                self._advance(1)
            return item

    from onnxruntime.quantization.shape_inference import quant_pre_process

    big = bool(external_data_files(source))
    with progress.progress("calibrating int8", total=len(calibration)) as advance:
        prepared = target.with_name("prepared.onnx")
        try:
            # Shape inference and basic fusions first, as ONNX Runtime recommends: quantisation
            # needs every tensor's type and shape, and must see Conv+BN already folded.
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True, save_as_external_data=big)
            quantize_static(
                str(prepared),
                str(target),
                _Reader(advance),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,  # 7-bit weights: see the docstring
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                use_external_data_format=big,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )
        except Exception as exc:
            raise BackendError(f"{source}: int8 quantisation failed ({first_line(exc)})") from exc
    return target


def publish(staged: Path, target: Path, external: bool) -> Path:
    """Re-read a model ONNX Runtime wrote in the staging folder and write it self-contained at `target`."""
    return save_model(load_model(staged), target, external_data=external or None)


def _calibration_batches(
    specs: list[InputSpec], feeds: dict[str, np.ndarray], source: Path
) -> list[dict[str, np.ndarray]]:
    """Calibrate with the model's static batch when it has one (it cannot run any other size)."""
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
