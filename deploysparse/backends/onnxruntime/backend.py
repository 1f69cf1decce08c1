"""OnnxRuntimeBackend: build (optimise, convert, quantise), run, and look inside models with ONNX Runtime."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from deploysparse.backends.base import Backend, BuildRequest, Built, cpu_name
from deploysparse.backends.fp16 import convert_fp16
from deploysparse.backends.onnxruntime import build, int8, intermediates, profiler
from deploysparse.backends.onnxruntime.runner import OrtRunner
from deploysparse.backends.onnxruntime.runtime import load_onnxruntime
from deploysparse.calibration import load_calibration, sample_count
from deploysparse.errors import BackendError, UsageError
from deploysparse.graph.rules import int8_op_types
from deploysparse.modelio import loaded_with_external_data, needs_external_data, save_model

# Preference order when the user does not choose: a GPU provider when the installed wheel has one.
# The TensorRT execution provider is used only on request: its first run builds an engine (minutes).
_DEFAULT_PROVIDER_ORDER = ("CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeBackend(Backend):
    """Build (optimise, quantise) and run models with ONNX Runtime."""

    name = "onnxruntime"
    has_profiler = True

    def __init__(self, providers: list[str] | None = None) -> None:
        self._providers = providers

    def providers(self) -> list[str]:
        """The execution providers sessions use: the requested ones, else the best installed."""
        available = load_onnxruntime().get_available_providers()
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
        return load_onnxruntime().__version__

    def device(self) -> str:
        first = self.providers()[0]
        if first == "CPUExecutionProvider":
            return f"CPU: {cpu_name()}"
        return f"GPU via {first} (onnxruntime {self.version()})"

    def runner(
        self, path: str | os.PathLike[str], threads: int | None = None, *, spinning: bool = True
    ) -> OrtRunner:
        return OrtRunner(path, self.providers(), threads, spinning=spinning)

    def _artifact_path(self, out_dir: Path, precision: str) -> Path:
        return out_dir / "model.optimized.onnx"

    def _extra_outputs(self, out_dir: Path, precision: str) -> list[tuple[Path, str]]:
        return [(out_dir / f"model.{precision}.onnx", "model")] if precision != "fp32" else []

    def _build_artifact(self, request: BuildRequest) -> Built:
        """Write `model.<precision>.onnx` (fp16/int8 only) and `model.optimized.onnx` (ONNX Runtime's
        optimisations that the ONNX checker accepts at the model's opset: build.optimize)."""
        model, precision = request.model, request.precision
        files: list[Path] = []
        metadata: dict = {}
        too_big_inline = needs_external_data(model)
        external = loaded_with_external_data(model) or too_big_inline
        name = str(request.source)
        with (
            tempfile.TemporaryDirectory(prefix=".build-", dir=request.out_dir) as work_dir,
            build.naming_the_model(Path(work_dir), name),
        ):
            work = Path(work_dir)  # a private staging folder (build.py's module doc says why)
            source = save_model(model, work / "source.onnx", external_data=too_big_inline)
            if precision == "fp16":
                feeds = load_calibration(request.calib, request.specs) if request.calib is not None else None
                conversion = convert_fp16(model, feeds)
                source = save_model(
                    conversion.model, work / "fp16.onnx", external_data=needs_external_data(conversion.model)
                )
                metadata["fp16"] = conversion.to_json()
                metadata["calibration_samples"] = sample_count(feeds) if feeds is not None else None
            elif precision == "int8":
                _refuse_quantised(model, name)
                feeds = load_calibration(request.calib, request.specs)
                judge = request.int8.judge
                judge_feeds = load_calibration(judge, request.specs) if judge is not None else None
                quantized = int8.build_int8(
                    self, source, request.specs, feeds, work, request.int8, judge_feeds=judge_feeds
                )
                source = quantized.model
                metadata["calibration_samples"] = sample_count(feeds)
                metadata["quantization"] = quantized.metadata
            if precision != "fp32":
                converted = build.load_written(source, f"the {precision} model ONNX Runtime wrote", name)
                files.append(build.publish(converted, request.out_dir / f"model.{precision}.onnx", external))
            optimized = build.optimize(source, work, self.providers())
            metadata["providers"] = optimized.providers
            metadata["graph_optimization"] = optimized.metadata()
            files.append(build.publish(optimized.model, request.artifact, external))
        if request.workspace_mb is not None:
            metadata["note"] = "--workspace applies to TensorRT only; ONNX Runtime ignores it"
        return Built(files, metadata)

    # Inner tensors on the CPU provider with graph optimisations off, so every tensor of the model as
    # it is can be read; per-node latency from ONNX Runtime's profiler.
    intermediate_batches = staticmethod(intermediates.intermediate_batches)
    _profile = staticmethod(profiler.profile_side_by_side)


def _refuse_quantised(model: onnx.ModelProto, name: str) -> None:
    """An int8 build quantises a float model; one that already holds quantised ops (ddddocr's OCR
    model ships dynamically quantised) would be quantised twice, which ONNX Runtime's quantiser fails
    at with a KeyError."""
    held = int8_op_types(model.graph)
    if held:
        raise UsageError(
            f"{name}: already quantised (holds {', '.join(held)}): build it with --precision fp32, its "
            "int8 kernels run as they are, or quantise the float model it came from"
        )
