"""ONNX Runtime: the default backend, because it runs everywhere (CPU wheel) and on GPUs (onnxruntime-gpu).

`build` writes what ONNX Runtime would otherwise recompute at every session start: the graph after
all of its optimisations (`optimized_model_filepath`), for fp32, fp16 (converted with
onnxconverter-common) or int8 (static QDQ quantisation calibrated on the user's data). The QDQ model
is written too, because it is portable: TensorRT and other runtimes consume QDQ graphs directly,
while the optimised file holds CPU-specific fused kernels.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx

from deploysparse import progress
from deploysparse.atomic import write_text
from deploysparse.backends.base import (
    Backend,
    BuildResult,
    Runner,
    ShapeTriple,
    check_precision,
    check_shapes_match,
    cpu_name,
    metadata_json,
    usable_cores,
)
from deploysparse.calibration import InputSpec, batches, load_calibration, model_input_specs, sample_count
from deploysparse.denormals import DenormalCount, flush_denormals
from deploysparse.errors import BackendError, CalibrationError, UsageError, first_line
from deploysparse.hashing import sha256_model
from deploysparse.modelio import (
    external_data_files,
    load_model,
    loaded_with_external_data,
    needs_external_data,
    save_model,
)
from deploysparse.ort_options import session_options
from deploysparse.output_guard import reads, refuse_overlap, writes

# Preference order when the user does not choose: a GPU provider when the installed wheel has one.
# The TensorRT execution provider is used only on request: its first run builds an engine (minutes).
_DEFAULT_PROVIDER_ORDER = ("CUDAExecutionProvider", "CPUExecutionProvider")

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

CALIBRATION_BATCH = 32


def _ort():
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


def session_input_specs(session) -> list[InputSpec]:
    """The inputs of an InferenceSession as InputSpecs (an unknown element type reads as float32)."""
    return [
        InputSpec(
            i.name,
            tuple(d if isinstance(d, int) else (d or None) for d in i.shape),
            np.dtype(_ORT_TYPES.get(i.type, np.float32)),
        )
        for i in session.get_inputs()
    ]


class OrtRunner(Runner):
    """An InferenceSession with full graph optimisation and an explicit thread count (see
    `session_options` for `spinning`)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: list[str],
        threads: int | None = None,
        *,
        spinning: bool = True,
    ) -> None:
        ort = _ort()
        path = Path(path)
        if not path.exists():
            raise BackendError(f"{path}: no such model file")
        self.threads = threads or usable_cores()
        options = session_options(ort, self.threads, spinning=spinning)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise BackendError(f"{path}: ONNX Runtime cannot load the model ({first_line(exc)})") from exc
        self.path = path
        self.providers = self.session.get_providers()
        self.input_specs = session_input_specs(self.session)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(None, dict(feeds))
        except Exception as exc:
            raise BackendError(f"{self.path}: inference failed ({first_line(exc)})") from exc
        return dict(zip(self.output_names, outputs, strict=True))


class OnnxRuntimeBackend(Backend):
    """Build (optimise, quantise) and run models with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, providers: list[str] | None = None) -> None:
        self._providers = providers

    def providers(self) -> list[str]:
        """The execution providers sessions use: the requested ones, else the best installed."""
        available = _ort().get_available_providers()
        if self._providers:
            missing = [p for p in self._providers if p not in available]
            if missing:
                raise BackendError(
                    f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
                    f"(available: {', '.join(available)})"
                )
            return list(self._providers)
        return [p for p in _DEFAULT_PROVIDER_ORDER if p in available]

    def version(self) -> str:
        return _ort().__version__

    def device(self) -> str:
        first = self.providers()[0]
        if first == "CPUExecutionProvider":
            return f"CPU: {cpu_name()}"
        return f"GPU via {first} (onnxruntime {self.version()})"

    def runner(
        self, path: str | os.PathLike[str], threads: int | None = None, *, spinning: bool = True
    ) -> OrtRunner:
        return OrtRunner(path, self.providers(), threads, spinning=spinning)

    def build(
        self,
        onnx_path: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        precision: str = "fp32",
        calib: str | os.PathLike[str] | Mapping[str, np.ndarray] | None = None,
        shapes: Mapping[str, ShapeTriple] | None = None,
        workspace_mb: int | None = None,
        keep_denormals: bool = False,
    ) -> BuildResult:
        """Write `model.<precision>.onnx` (fp16/int8 only) and `model.optimized.onnx` (+ `.json`).

        Denormal float32 weights are set to zero first unless `keep_denormals` (see denormals.py).
        """
        check_precision(precision)
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        model = load_model(onnx_path)
        specs = model_input_specs(model)
        if shapes:
            check_shapes_match(shapes, specs, str(onnx_path))
        if precision == "int8" and calib is None:
            raise UsageError(
                "--precision int8 needs --calib DATA (calibration inputs for the activation ranges)"
            )
        artifact = out_dir / "model.optimized.onnx"
        converted = out_dir / f"model.{precision}.onnx"
        refuse_overlap(
            [
                *writes("the optimised model", artifact, "model"),
                *writes("the converted model", converted, "model"),
            ],
            reads("the input model", onnx_path, "model"),
        )
        out_dir.mkdir(parents=True, exist_ok=True)

        files: list[Path] = []
        extra: dict = {}
        # Denormal weights go first (prune does the same): the staged copy below is built from `model`.
        flushed = DenormalCount() if keep_denormals else flush_denormals(model)
        extra["denormals_flushed"] = flushed.total
        too_big_inline = needs_external_data(model)
        external = loaded_with_external_data(model) or too_big_inline
        # ONNX Runtime's optimiser and quantiser resolve external data against folders of their own
        # (temporary ones included), so they work on a copy staged in a private folder, inline
        # whenever protobuf allows. Each result is then re-read with its weights and written where
        # it belongs by save_model, so every artefact carries its own data file beside it.
        with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir) as work_dir:
            work = Path(work_dir)
            source = save_model(model, work / "source.onnx", external_data=too_big_inline)
            if precision == "fp16":
                source = self._convert_fp16(model, work / "fp16.onnx")
            elif precision == "int8":
                feeds = load_calibration(calib, specs)
                source = _quantize_qdq(source, specs, feeds, work / "int8.onnx")
                extra["calibration_samples"] = sample_count(feeds)
                extra["quantization"] = (
                    "static QDQ, symmetric int8 activations and per-channel int8 weights, MinMax"
                )
            if precision != "fp32":
                files.append(_publish(source, converted, external))
            providers = self._optimize(source, work / "optimized.onnx")
            files.append(_publish(work / "optimized.onnx", artifact, external))
        for written in list(files):
            self.runner(written, threads=1)  # an artefact that ONNX Runtime cannot load is never "built"
            files.extend(external_data_files(written))

        metadata = {
            "backend": self.name,
            "version": self.version(),
            "precision": precision,
            "providers": providers,
            "device": self.device(),
            "source_model": str(onnx_path),
            "source_sha256": sha256_model(onnx_path),
            "inputs": {s.name: [d if isinstance(d, int) else None for d in s.shape] for s in specs},
            "shapes": {name: [list(s) for s in triple] for name, triple in (shapes or {}).items()},
            **extra,
        }
        if workspace_mb is not None:
            metadata["note"] = "--workspace applies to TensorRT only; ONNX Runtime ignores it"
        metadata_path = artifact.with_name(artifact.name + ".json")
        write_text(metadata_path, metadata_json(metadata))
        files.append(metadata_path)
        return BuildResult(self.name, precision, artifact, files, metadata)

    def _optimize(self, source: Path, target: Path) -> list[str]:
        """Let ONNX Runtime apply every graph optimisation once and save the result to `target`."""
        ort = _ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.optimized_model_filepath = str(target)
        if external_data_files(source):
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", target.name + ".data"
            )
        try:
            session = ort.InferenceSession(str(source), options, providers=self.providers())
        except Exception as exc:
            raise BackendError(
                f"{source}: ONNX Runtime cannot optimise the model ({first_line(exc)})"
            ) from exc
        return session.get_providers()

    @staticmethod
    def _convert_fp16(model: onnx.ModelProto, target: Path) -> Path:
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


def _quantize_qdq(source: Path, specs: list[InputSpec], feeds: dict[str, np.ndarray], target: Path) -> Path:
    """Static QDQ quantisation: symmetric int8 (zero point 0, as TensorRT requires), per-channel weights.

    Weights use 7 of the 8 bits (`reduce_range`). x86 CPUs without VNNI (AVX2, AVX-512 before
    Cascade Lake) multiply int8 pairs into 16-bit sums that saturate, so full-range weights lose
    accuracy there, at random: measured on an AVX2 EPYC, a digits CNN kept 0.980 top-1 with 7-bit
    weights and 0.942 with 8-bit (fp32: 0.980; tests/test_backends_ort.py). The artifact may run on
    another CPU than the one that built it, so the safe range is the default everywhere.
    """
    _ort()  # quieten ONNX Runtime's logger before quantisation opens its sessions
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


def _publish(staged: Path, target: Path, external: bool) -> Path:
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
