"""TensorRT through polygraphy's loaders: parse the ONNX, configure precision and shapes, build, save.

polygraphy already solves the fiddly parts (parser flags, optimisation profiles, the INT8 calibrator
and its cache, timing caches, host/device buffers), so this module only maps deploysparse's options
onto `NetworkFromOnnxPath`, `CreateConfig`, `Calibrator`, `EngineFromNetwork` and `SaveEngine`, and
records what the engine was built from in `model.engine.json`: an engine only runs on the TensorRT
version and GPU it was built with, so the metadata says which.

TensorRT is optional. Without it (or without a GPU) every entry point raises BackendError, and
`trt_support.check_onnx` still tells whether the parser will accept the graph.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx

from deploysparse import progress
from deploysparse.atomic import atomic_path
from deploysparse.backends.base import Backend, BuildRequest, Built, Runner, ShapeTriple, check_shapes_match
from deploysparse.backends.timing import Timer
from deploysparse.backends.trt_support import check_onnx
from deploysparse.calibration import InputSpec, batches, load_calibration, sample_count
from deploysparse.errors import BackendError, UsageError
from deploysparse.run_shapes import RunShapes

# Without --shapes, a model whose only dynamic dim is the batch gets this profile (min, opt, max).
DEFAULT_BATCH_PROFILE = (1, 1, 32)
TIMING_CACHE = "timing.cache"  # tactic timings, reused by the next build in the same folder
CALIBRATION_CACHE = "model.engine.calib"  # INT8 calibration, reused while the source is unchanged


def _tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendError(
            "TensorRT is not installed (pip install 'deploysparse[tensorrt]' on a machine with an NVIDIA GPU); "
            "`deploysparse build --backend tensorrt --check-only` checks operator support without it"
        ) from exc
    return tensorrt


def _require_gpu(trt) -> None:
    """A TensorRT builder needs a CUDA device; say so plainly instead of a pybind 'nullptr' error."""
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except (TypeError, RuntimeError) as exc:
        raise BackendError(f"TensorRT is installed but no usable NVIDIA GPU was found ({exc})") from exc
    if builder is None:
        raise BackendError("TensorRT is installed but no usable NVIDIA GPU was found")


def gpu_name() -> str:
    """The first GPU's name as nvidia-smi reports it (metadata only; 'unknown GPU' when unavailable)."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return "unknown GPU"


class TrtRunner(Runner):
    """polygraphy's TrtRunner on a serialized engine, activated for the runner's lifetime."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        trt = _tensorrt()
        _require_gpu(trt)
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes
        from polygraphy.backend.trt import TrtRunner as PolygraphyTrtRunner
        from polygraphy.datatype import DataType

        path = Path(path)
        if not path.exists():
            raise BackendError(f"{path}: no such engine file")
        if path.suffix == ".onnx":
            raise UsageError(
                f"{path}: the TensorRT backend runs engines; build one first with `deploysparse build`"
            )
        self.path = path
        self._runner = PolygraphyTrtRunner(EngineFromBytes(BytesFromPath(str(path))))
        try:
            self._runner.activate()
        except Exception as exc:
            raise BackendError(f"{path}: TensorRT cannot load the engine ({exc})") from exc
        engine = self._runner.engine
        self.input_specs = [
            InputSpec(
                name,
                tuple(d if d >= 0 else None for d in meta.shape),
                np.dtype(DataType.to_dtype(meta.dtype, "numpy")),
            )
            for name, meta in self._runner.get_input_metadata().items()
        ]
        self.output_names = [
            engine.get_tensor_name(i)
            for i in range(engine.num_io_tensors)
            if engine.get_tensor_mode(engine.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT
        ]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self._runner.infer(dict(feeds))
        except Exception as exc:
            raise BackendError(f"{self.path}: TensorRT inference failed ({exc})") from exc
        return {name: np.asarray(outputs[name]) for name in self.output_names}

    def close(self) -> None:
        if self._runner.is_active:
            self._runner.deactivate()


class EngineTimer(Timer):
    """TensorRT times engines: each model is built into an FP16 engine first, in a temporary folder."""

    @contextlib.contextmanager
    def open(self, path: Path, spinning: bool = True) -> Iterator[Runner]:
        with tempfile.TemporaryDirectory(prefix="deploysparse-engine-") as folder:
            built = self.backend.build(path, folder, precision="fp16")
            with self.backend.runner(built.artifact, spinning=spinning) as runner:
                yield runner


class TensorRTBackend(Backend):
    """Build and run TensorRT engines (needs the tensorrt package and an NVIDIA GPU)."""

    name = "tensorrt"
    needs_shape_profile = True
    takes_workspace = True

    def version(self) -> str:
        return _tensorrt().__version__

    def device(self) -> str:
        return f"GPU: {gpu_name()}"

    def runner(
        self, path: str | os.PathLike[str], threads: int | None = None, *, spinning: bool = True
    ) -> TrtRunner:
        return TrtRunner(path)  # the GPU runs the engine: no CPU thread pool to spin

    def timer(self, batch: int, threads: int | None = None) -> EngineTimer:
        return EngineTimer(self, batch, threads)

    def _artifact_path(self, out_dir: Path, precision: str) -> Path:
        return out_dir / "model.engine"

    def _extra_outputs(self, out_dir: Path, precision: str) -> list[tuple[Path, str]]:
        return [(out_dir / TIMING_CACHE, "file"), (out_dir / CALIBRATION_CACHE, "file")]

    def _build_shapes(
        self,
        specs: list[InputSpec],
        shapes: dict[str, ShapeTriple],
        source: str,
        run_shapes: RunShapes | None = None,
    ) -> dict[str, ShapeTriple]:
        return resolve_profile(specs, shapes, source, run_shapes)

    def _calibration_required(self, model: onnx.ModelProto, precision: str) -> str | None:
        if precision == "int8" and not _has_qdq(model):
            return (
                "--precision int8 needs --calib DATA, or a QDQ model (build one with --backend onnxruntime "
                "--precision int8 and pass its model.int8.onnx)"
            )
        return None

    def _check(self, model: onnx.ModelProto, source: Path) -> None:
        support = check_onnx(model)
        if not support.ok:
            raise BackendError(f"{source}: {support.summary()}")
        _require_gpu(_tensorrt())

    def _build_artifact(self, request: BuildRequest) -> Built:
        """Write `model.engine`, `timing.cache` (and the INT8 calibration cache `model.engine.calib`).

        The engine is built from the request's model: the source file itself, or its copy with
        denormal float32 weights set to zero."""
        trt = _tensorrt()
        from polygraphy.backend.trt import (
            Calibrator,
            CreateConfig,
            EngineFromNetwork,
            NetworkFromOnnxPath,
            Profile,
            SaveEngine,
        )

        out_dir, precision, engine_path = request.out_dir, request.precision, request.artifact
        timing_cache = out_dir / TIMING_CACHE
        calib_cache = out_dir / CALIBRATION_CACHE
        explicit_qdq = _has_qdq(request.model)
        _drop_stale_calibration_cache(
            engine_path.with_name(engine_path.name + ".json"), calib_cache, request.source_sha256
        )

        trt_profile = Profile()
        for name, (lo, opt, hi) in request.shapes.items():
            trt_profile.add(name, min=lo, opt=opt, max=hi)
        calibrator = None
        calibration_samples = None
        if precision == "int8" and not explicit_qdq:
            feeds = load_calibration(request.calib, request.specs)
            calibration_samples = sample_count(feeds)
            calibrator = Calibrator(_calibration_loader(feeds, request.shapes), cache=str(calib_cache))
        workspace_mb = request.workspace_mb
        config = CreateConfig(
            fp16=precision in ("fp16", "int8"),
            int8=precision == "int8",
            calibrator=calibrator,
            profiles=[trt_profile],
            memory_pool_limits=(
                {trt.MemoryPoolType.WORKSPACE: workspace_mb << 20} if workspace_mb is not None else None
            ),
            load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
        )
        with (
            progress.progress("building TensorRT engine"),
            atomic_path(engine_path, suffix=".engine") as tmp,
            tempfile.TemporaryDirectory(prefix=".flushed-", dir=out_dir) as work,
        ):
            network = NetworkFromOnnxPath(str(request.model_file(Path(work))))
            try:
                SaveEngine(
                    EngineFromNetwork(network, config=config, save_timing_cache=str(timing_cache)), str(tmp)
                )()
            except Exception as exc:
                raise BackendError(f"{request.source}: TensorRT engine build failed ({exc})") from exc

        files = [engine_path, timing_cache]
        if calib_cache.exists():
            files.append(calib_cache)
        metadata = {
            "int8_mode": ("explicit QDQ" if explicit_qdq else "calibrated") if precision == "int8" else None,
            "calibration_samples": calibration_samples,
        }
        return Built(files, metadata)


def resolve_profile(
    specs: list[InputSpec],
    shapes: Mapping[str, ShapeTriple],
    source: str,
    run_shapes: RunShapes | None = None,
) -> dict[str, ShapeTriple]:
    """One optimisation profile covering every input: --shapes where given, else the run's shapes
    (--input-shape: a dynamic height and width fixed at the size given) or the static dims, over
    the static or default batch range."""
    check_shapes_match(shapes, specs, source)
    profile: dict[str, ShapeTriple] = {}
    for spec in specs:
        if spec.name in shapes:
            profile[spec.name] = tuple(tuple(s) for s in shapes[spec.name])
            continue
        if run_shapes is None and any(not isinstance(d, int) for d in spec.shape[1:]):
            raise UsageError(
                f"input '{spec.name}' of {source} has dynamic dims {spec.shape_text()}; give them with "
                f"--input-shape {spec.name}:1x... or --shapes {spec.name}:MIN,OPT,MAX"
            )
        rest = tuple(run_shapes.shapes[spec.name][1:] if run_shapes else (int(d) for d in spec.shape[1:]))
        if isinstance(spec.batch_dim, int):
            fixed = (spec.batch_dim, *rest)
            profile[spec.name] = (fixed, fixed, fixed)
        else:
            lo, opt, hi = DEFAULT_BATCH_PROFILE
            profile[spec.name] = ((lo, *rest), (opt, *rest), (hi, *rest))
    return profile


def _calibration_loader(feeds: dict[str, np.ndarray], profile: Mapping[str, ShapeTriple]) -> Iterator[dict]:
    """TensorRT calibrates at the profile's OPT shape: feed batches of exactly that many samples."""
    batch = next(iter(profile.values()))[1][0]
    for item in batches(feeds, batch):
        if sample_count(item) == batch:
            yield item


def _has_qdq(model: onnx.ModelProto) -> bool:
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


def _drop_stale_calibration_cache(metadata_path: Path, calib_cache: Path, source_sha: str) -> None:
    """A calibration cache is reused only for the model it was computed on."""
    if not calib_cache.exists():
        return
    try:
        previous = json.loads(metadata_path.read_text(encoding="utf-8")).get("source_sha256")
    except (OSError, ValueError):
        previous = None
    if previous != source_sha:
        calib_cache.unlink()
