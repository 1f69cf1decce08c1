"""Static QDQ quantisation with ONNX Runtime's quantiser, in three steps a build can repeat cheaply.

`prepare` once (opset upgrade, ONNX Runtime's pre-processing), `calibrate` once per calibration
method (the activation ranges, saved as ONNX Runtime's calibration cache), then `quantize` as often as
a build needs (per scheme, per set of layers kept float) without running the calibration data again.
`build.quantize_qdq` does all three for one scheme: what a backend that needs a QDQ model calls.

Per-channel weights need opset 13 (the `axis` attribute of DequantizeLinear); models from Paddle, older
torch and TensorFlow converters are often at opset 11 or 12. `prepare` upgrades them with ONNX's
version converter, checks the converted model computes the same on the calibration data, and
otherwise quantises per tensor at the model's own opset; either way the build records which.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from deploysparse import progress
from deploysparse.backends.onnxruntime.runtime import load_onnxruntime
from deploysparse.backends.quantize import QuantScheme
from deploysparse.errors import BackendError, first_line
from deploysparse.modelio import check_model, external_data_files, load_model, save_model

PER_CHANNEL_OPSET = 13  # DequantizeLinear takes `axis` from opset 13
ENTROPY_BINS = 2048  # histogram bins for entropy calibration (ONNX Runtime's default of 128 leaves
# its threshold search a single candidate, the full range; TensorRT's entropy calibrator uses 2048)
PERCENTILE = 99.999
# A converted model must compute what the original does: float32 rounding of the same ops, scaled
# by the output's magnitude.
UPGRADE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Prepared:
    """A model ready to calibrate and quantise, and what preparing it changed."""

    path: Path
    per_channel: bool  # False when the opset stays below 13 (per-tensor weights)
    source_opset: int
    opset: int
    note: str | None  # the upgrade, or why the weights are per tensor; None when nothing changed

    def to_json(self) -> dict:
        return {
            "source": self.source_opset,
            "quantized": self.opset,
            "per_channel": self.per_channel,
            "note": self.note,
        }


@dataclass(frozen=True)
class Quantized:
    """A QDQ model, the scheme it was quantised with (per-channel off where the opset forbids it) and
    how its opset was handled."""

    path: Path
    scheme: QuantScheme
    prepared: Prepared


def prepare(
    source: Path, target: Path, batches: Sequence[Mapping[str, np.ndarray]], per_channel: bool
) -> Prepared:
    """Upgrade `source` to opset 13 when per-channel weights need it (module doc), then run ONNX
    Runtime's pre-processing (shape inference, Conv+BN folding: quantisation must see both) into
    `target`. `batches`: data to check an upgraded model against the original."""
    load_onnxruntime()  # quieten ONNX Runtime's logger before the quantiser opens sessions
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = load_model(source)
    source_opset = _opset(model)
    opset, note, upgraded = source_opset, None, None
    if per_channel and source_opset < PER_CHANNEL_OPSET:
        upgraded, why_not = _upgrade(model, source, target.with_name("upgraded.onnx"), batches)
        if upgraded is not None:
            opset = PER_CHANNEL_OPSET
            note = f"opset {source_opset} upgraded to {PER_CHANNEL_OPSET} for per-channel weights (ONNX version converter)"
        else:
            per_channel = False
            note = (
                f"per-tensor weights: opset {source_opset} has no per-channel DequantizeLinear and {why_not}"
            )
    del model
    big = bool(external_data_files(source))
    try:
        quant_pre_process(
            str(upgraded or source), str(target), skip_symbolic_shape=True, save_as_external_data=big
        )
    except Exception as exc:
        raise BackendError(
            f"{source}: ONNX Runtime cannot prepare the model for quantisation ({first_line(exc)})"
        ) from exc
    return Prepared(target, per_channel, source_opset, opset, note)


def calibrate(
    prepared: Prepared,
    batches: Sequence[Mapping[str, np.ndarray]],
    method: str,
    symmetric: bool,
    target: Path,
) -> Path:
    """Activation ranges of every tensor the quantiser may quantise, by `method` (minmax, percentile,
    entropy) over `batches`, saved as ONNX Runtime's calibration cache at `target`. Batches are fed one
    at a time, so memory holds one batch's activations (ONNX Runtime's calibrators keep every output
    of one `collect_data` call)."""
    load_onnxruntime()
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options: dict[str, object] = {"symmetric": symmetric}
    if method == "entropy":
        options["num_bins"] = ENTROPY_BINS
    elif method == "percentile":
        options["percentile"] = PERCENTILE
    with progress.progress(f"calibrating int8 ({method})", total=len(batches)) as advance, _quiet_logging():
        try:
            calibrator = create_calibrator(
                prepared.path,
                _op_types(),
                augmented_model_path=str(target.with_name(f"augmented-{method}.onnx")),
                calibrate_method=_method(method),
                use_external_data_format=bool(external_data_files(prepared.path)),
                extra_options=options,
            )
            for batch in batches:
                calibrator.collect_data(_reader([batch]))
                advance(1)
            ranges = calibrator.compute_data()
        except Exception as exc:
            raise BackendError(f"int8 calibration ({method}) failed ({first_line(exc)})") from exc
    save_tensors_data(ranges, target)
    return target


def quantize(prepared: Prepared, ranges: Path, scheme: QuantScheme, target: Path) -> Quantized:
    """The QDQ model of `prepared` for `scheme`, from the ranges `calibrate` saved (no data is run)."""
    load_onnxruntime()
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    scheme = scheme.replace(per_channel=scheme.per_channel and prepared.per_channel)
    try:
        with _quiet_logging():
            quantize_static(
                str(prepared.path),
                str(target),
                None,
                calibration_cache_path=str(ranges),
                quant_format=QuantFormat.QDQ,
                per_channel=scheme.per_channel,
                reduce_range=scheme.reduce_range,
                activation_type=QuantType.QUInt8 if scheme.activations == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(scheme.excluded_nodes),
                calibrate_method=_method(scheme.calibration),
                use_external_data_format=bool(external_data_files(prepared.path)),
                extra_options={"ActivationSymmetric": scheme.symmetric, "WeightSymmetric": True},
            )
    except Exception as exc:
        raise BackendError(f"int8 quantisation failed ({first_line(exc)})") from exc
    return Quantized(target, scheme, prepared)


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes the quantiser quantised in a QDQ model: every node but Q/DQ whose first input is
    dequantised (names of the prepared model, which `QuantScheme.excluded_nodes` takes)."""
    dequantized = {
        out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output
    }
    return [
        node.name
        for node in model.graph.node
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear")
        and node.input
        and node.input[0] in dequantized
    ]


def _reader(items: Sequence[Mapping[str, np.ndarray]]):
    """A CalibrationDataReader over `items` (ONNX Runtime's calibrators take readers)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items: Iterator[Mapping[str, np.ndarray]] = iter(items)

        def get_next(self) -> Mapping[str, np.ndarray] | None:
            return next(self._items, None)

    return Reader()


def _upgrade(
    model: onnx.ModelProto, source: Path, target: Path, batches: Sequence[Mapping[str, np.ndarray]]
) -> tuple[Path | None, str]:
    """`model` converted to opset 13 and written to `target` when ONNX's version converter can and the
    result computes the same on the first batch; else (None, why not)."""
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, PER_CHANNEL_OPSET)
        check_model(converted)
    except Exception as exc:
        return None, f"ONNX's version converter cannot upgrade it ({first_line(exc)})"
    path = save_model(converted, target)
    if batches:
        original, upgraded = _outputs(source, batches[0]), _outputs(path, batches[0])
        for name, value in original.items():
            scale = float(np.max(np.abs(value))) or 1.0
            error = float(np.max(np.abs(value - upgraded[name]))) / scale
            if not error <= UPGRADE_TOLERANCE:
                return None, f"the upgraded model's output '{name}' differs by {error:.2g} of its scale"
    return path, ""


def _outputs(path: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    ort = load_onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, dict(feeds)), strict=True))


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _op_types() -> list[str]:
    """Every op type ONNX Runtime's quantiser can quantise (quantize_static's own default list)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[name]


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """ONNX Runtime's quantiser logs a warning per unquantised op through the root logger, and its
    histogram calibrators print their progress to stdout: not ours to print (stdout may be --json)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
