"""TensorRT through polygraphy's loaders: build the validated artefact into an engine, run it, time it.

What TensorRT is given is made and proven first, without TensorRT (`trt_artifact.py`): the ONNX that
holds the precision (fp16 casts, int8 Q/DQ, optionally 2:4 sparse weights), validated on ONNX Runtime
CPU against the fp32 model, and the trtexec and polygraphy commands that build it on the device.
Here, on a machine with TensorRT 10 or later and a GPU, that artefact is parsed into a strongly
typed network (`NetworkFromOnnxPath(strongly_typed=True)`) and built with `CreateConfig` setting no
precision flag and no calibrator: the engine computes what was validated. TensorRT 8.x cannot parse
strongly typed networks; there the old weakly typed build remains (fp16/int8 builder flags, for int8
polygraphy's implicit `Calibrator` on the fp32 model), with a deprecation line: implicit calibration
is deprecated since TensorRT 10.1, weak typing since 10.12, and TensorRT 11 removes both.

Where the engine is built is the backend's `engine` option: "build" (TensorRT and a GPU required,
`deploysparse build`), "emit" (`build --emit-command`: the artefact and the commands only) or "auto"
(`run` and the API: build when this machine can, else write the artefact and the commands and say
that the engine was not built here). `model.engine.json` (or `model.<precision>.onnx.json` when no
engine was built) records what the engine was built from and for which TensorRT; an engine only
runs on the TensorRT version and GPU it was built with.
"""

from __future__ import annotations

import contextlib
import functools
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
from deploysparse.backends import REFERENCE_BACKEND
from deploysparse.backends.base import Backend, BuildRequest, Built, Runner, ShapeTriple, check_shapes_match
from deploysparse.backends.timing import Timer
from deploysparse.backends.trt_artifact import ENGINE, TIMING_CACHE, Artefact, artifact_name, prepare_artifact
from deploysparse.backends.trt_commands import SCRIPT
from deploysparse.backends.trt_support import check_onnx
from deploysparse.backends.trt_versions import TrtVersion, parse_version
from deploysparse.calibration import InputSpec, batches, load_calibration, sample_count
from deploysparse.errors import BackendError, UsageError
from deploysparse.run_shapes import RunShapes

# Without --shapes, a model whose only dynamic dim is the batch gets this profile (min, opt, max).
DEFAULT_BATCH_PROFILE = (1, 1, 32)
CALIBRATION_CACHE = (
    "model.engine.calib"  # TensorRT < 10's implicit INT8 calibration, reused while the source is unchanged
)
ENGINE_MODES = ("build", "emit", "auto")


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
        _require_gpu(_tensorrt())  # before the artefact is made: timing needs the engine
        with tempfile.TemporaryDirectory(prefix="deploysparse-engine-") as folder:
            built = self.backend.build(path, folder, precision="fp16")
            with self.backend.runner(built.artifact, spinning=spinning) as runner:
                yield runner


class TensorRTBackend(Backend):
    """Build TensorRT engines from validated artefacts, and run them (needs tensorrt and an NVIDIA GPU).

    `trt_version`: the TensorRT the support check and the engine commands target (default: the
    installed one, else the newest table). `engine`: "build", "emit" or "auto" (module doc)."""

    name = "tensorrt"
    needs_shape_profile = True
    takes_workspace = True
    takes_sparsity = True

    def __init__(self, trt_version: str | None = None, engine: str = "auto") -> None:
        if engine not in ENGINE_MODES:
            raise ValueError(f"engine must be one of {', '.join(ENGINE_MODES)}, got {engine!r}")
        self._trt_version = trt_version
        self._engine = engine

    def version(self) -> str:
        installed = _installed_version()
        return installed if installed is not None else "not installed"

    def device(self) -> str:
        reason = self.not_built_here()
        return (
            f"GPU: {gpu_name()}" if reason is None else f"none: the engine is built on the device ({reason})"
        )

    def target_version(self) -> TrtVersion:
        """The TensorRT the artefact, the support check and the commands are for."""
        installed = _installed_version()
        return parse_version(self._trt_version or installed)

    @functools.cached_property
    def _why_not_here(self) -> str | None:
        return _why_not_here(self._engine)

    def not_built_here(self) -> str | None:
        """Why this machine does not build the engine (None: it does); asked once per backend."""
        return self._why_not_here

    def runner(
        self, path: str | os.PathLike[str], threads: int | None = None, *, spinning: bool = True
    ) -> TrtRunner:
        return TrtRunner(path)  # the GPU runs the engine: no CPU thread pool to spin

    def timer(self, batch: int, threads: int | None = None) -> EngineTimer:
        return EngineTimer(self, batch, threads)

    def _artifact_path(self, out_dir: Path, precision: str) -> Path:
        return out_dir / (ENGINE if self.not_built_here() is None else artifact_name(precision))

    def _extra_outputs(self, out_dir: Path, precision: str) -> list[tuple[Path, str]]:
        artefact = out_dir / artifact_name(precision)
        return [
            (artefact, "model"),
            (artefact.with_name(artefact.name + ".json"), "file"),
            (out_dir / ENGINE, "file"),
            (out_dir / f"{ENGINE}.json", "file"),
            (out_dir / SCRIPT, "file"),
            (out_dir / TIMING_CACHE, "file"),
            (out_dir / CALIBRATION_CACHE, "file"),
        ]

    _build_shapes = staticmethod(resolve_profile)

    def _calibration_required(self, model: onnx.ModelProto, precision: str) -> str | None:
        if precision == "int8" and not _has_qdq(model):
            return (
                "--precision int8 needs --calib DATA, or a QDQ model (build one with --backend onnxruntime "
                "--precision int8 and pass its model.int8.onnx)"
            )
        return None

    def _check(self, model: onnx.ModelProto, source: Path) -> None:
        support = check_onnx(model, self.target_version())
        if not support.ok:
            raise BackendError(f"{source}: {support.summary()}")
        if self._engine == "build":
            _require_gpu(_tensorrt())

    def _build_artifact(self, request: BuildRequest) -> Built:
        """Write and validate the artefact with its commands (`trt_artifact.py`), then build the engine
        from it when this machine can: `model.engine` and `timing.cache`."""
        artefact = prepare_artifact(request, self.target_version())
        metadata = dict(artefact.metadata)
        reason = artefact.failure or self.not_built_here()
        if reason is not None:
            for stale in (ENGINE, f"{ENGINE}.json"):  # an earlier build's engine is not this artefact's
                (request.out_dir / stale).unlink(missing_ok=True)
            metadata["engine"] = {"built": False, "reason": reason}
            return Built(
                artefact.files, metadata, artefact.path, REFERENCE_BACKEND, f"engine not built: {reason}"
            )
        (request.out_dir / f"{artefact.path.name}.json").unlink(
            missing_ok=True
        )  # the engine's metadata holds it
        files, own = _build_engine(request, artefact)
        metadata.update(own)
        metadata["engine"] = {"built": True, "reason": None}
        return Built([*artefact.files, *files], metadata)


def _installed_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)


def _why_not_here(engine: str) -> str | None:
    """None when this machine builds engines in `engine` mode, else the reason in words."""
    if engine == "emit":
        return "--emit-command: the artefact and the commands only"
    if engine == "build":
        return None  # TensorRTBackend._check raises when TensorRT or the GPU is missing
    try:
        _require_gpu(_tensorrt())
    except BackendError as exc:
        return "TensorRT is not installed" if _installed_version() is None else str(exc)
    return None


def _build_engine(request: BuildRequest, artefact: Artefact) -> tuple[list[Path], dict]:
    """Build `model.engine` from the validated artefact with the installed TensorRT; return the
    files written and the metadata keys of the build."""
    trt = _tensorrt()
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineFromNetwork,
        NetworkFromOnnxPath,
        Profile,
        SaveEngine,
    )

    installed = parse_version(trt.__version__)
    out_dir = request.out_dir
    engine_path, timing_cache = out_dir / ENGINE, out_dir / TIMING_CACHE
    profile = Profile()
    for name, (lo, opt, hi) in request.shapes.items():
        profile.add(name, min=lo, opt=opt, max=hi)
    limits = (
        {trt.MemoryPoolType.WORKSPACE: request.workspace_mb << 20}
        if request.workspace_mb is not None
        else None
    )
    common = {
        "profiles": [profile],
        "memory_pool_limits": limits,
        "load_timing_cache": str(timing_cache) if timing_cache.exists() else None,
        "sparse_weights": request.sparsity is not None,
    }
    if installed.strongly_typed:
        network = NetworkFromOnnxPath(str(artefact.path), strongly_typed=True)
        config = CreateConfig(**common)
        own: dict = {
            "engine_typing": "strongly typed: precision from the artefact, no builder precision flags"
        }
    else:
        network, config, own = _weakly_typed(request, artefact, common, installed)
    with progress.progress("building TensorRT engine"), atomic_path(engine_path, suffix=".engine") as tmp:
        try:
            SaveEngine(
                EngineFromNetwork(network, config=config, save_timing_cache=str(timing_cache)), str(tmp)
            )()
        except Exception as exc:
            raise BackendError(f"{request.source}: TensorRT engine build failed ({exc})") from exc
    calibrated = not installed.strongly_typed and (out_dir / CALIBRATION_CACHE).exists()
    return [engine_path, timing_cache, *([out_dir / CALIBRATION_CACHE] if calibrated else [])], own


def _weakly_typed(request: BuildRequest, artefact: Artefact, common: dict, installed: TrtVersion):
    """TensorRT 8.x: the builder's precision flags, and for int8 the implicit calibrator on the fp32
    model (deprecated since TensorRT 10.1, removed in 11): the engine's numerics are TensorRT's choice,
    not the validated artefact's."""
    from polygraphy.backend.trt import Calibrator, CreateConfig, NetworkFromOnnxPath

    precision, out_dir = request.precision, request.out_dir
    calib_cache = out_dir / CALIBRATION_CACHE
    _drop_stale_calibration_cache(out_dir / f"{ENGINE}.json", calib_cache, request.source_sha256)
    calibrator, source = None, artefact.path
    explicit = precision == "int8" and _has_qdq(request.model)
    if precision == "int8" and not explicit:
        feeds = load_calibration(request.calib, request.specs)
        calibrator = Calibrator(_calibration_loader(feeds, request.shapes), cache=str(calib_cache))
        source = request.source
    config = CreateConfig(
        fp16=precision in ("fp16", "int8"), int8=precision == "int8", calibrator=calibrator, **common
    )
    deprecated = (
        f"TensorRT {installed} < 10: weakly typed build with builder precision flags"
        + (", int8 by polygraphy's implicit calibrator" if calibrator is not None else "")
        + " (deprecated since TensorRT 10.1/10.12, removed in 11); the engine's numerics were not validated here"
    )
    own = {
        "engine_typing": deprecated,
        "int8_mode": ("explicit QDQ" if explicit else "calibrated (implicit, deprecated)")
        if precision == "int8"
        else None,
        "warnings": [deprecated],
    }
    if calibrator is not None:
        own["calibration_samples"] = sample_count(feeds)
    return NetworkFromOnnxPath(str(source)), config, own


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
