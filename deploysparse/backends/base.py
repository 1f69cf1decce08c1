"""The one small interface every backend shares: build an artifact, run it, time it, look inside it.

Modelled on polygraphy's loaders and runners: `Backend.build` turns an ONNX file into the artifact the
runtime loads (an optimised ONNX for ONNX Runtime, a serialized engine for TensorRT) plus a JSON file
of metadata beside it; `Backend.runner` opens an artifact and returns a `Runner` whose `run(feeds)`
is the only thing validation and benchmarking call. Keeping the surface this small is what lets
`validate` and `bench` work unchanged on every backend. The rest of the package asks a backend for
three more things: a `timer` (latency tables), `intermediates` (the values of inner tensors, for the
analysis, the dead-filter check and the criteria) and a per-layer `profile`.

`build` is a template method (as polygraphy's `BaseRunner.infer` around `infer_impl`): the steps
every backend shares run once here, and a backend writes only its artifact in `_build_artifact`.
Every backend's metadata JSON has the same keys: `backend`, `version`, `device`, `precision`,
`source_model`, `source_sha256`, `inputs` (declared dims, null when dynamic), `shapes` (the
optimisation profile: min, opt, max per input; {} when none), `input_shapes` (the run's shapes and
their source, deploysparse.run_shapes; null for a dynamic model given none), `workspace_mb`,
`calibration_samples` (null unless calibrated), `denormals_flushed`, then the backend's own
(ONNX Runtime: `providers`, `quantization`: the int8 scheme, why, and int8 against fp32 as timed
here, `fp16`; TensorRT: its artefact, the artefact's validation, the engine commands, whether the
engine was built; `SHARED_METADATA` lists the shared keys).
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import onnx

from deploysparse.atomic import write_text
from deploysparse.backends import REFERENCE_BACKEND, backend_names, get_backend
from deploysparse.backends.machine import cpu_name as cpu_name  # a backend's device() names it
from deploysparse.backends.quantize import Int8Options
from deploysparse.backends.timing import Timer
from deploysparse.calibration import InputSpec, model_input_specs
from deploysparse.denormals import DenormalCount, flush_denormals
from deploysparse.errors import BackendError, UsageError
from deploysparse.hashing import sha256_model
from deploysparse.input_shapes import parse_shape
from deploysparse.modelio import external_data_files, load_model, save_model
from deploysparse.output_guard import reads, refuse_overlap, writes
from deploysparse.precision import check_precision as check_precision  # what every backend checks
from deploysparse.run_shapes import RunShapes, shapes_if_known

if TYPE_CHECKING:
    from deploysparse.profiling import LayerProfile

ShapeTriple = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
# The metadata keys every backend writes (module doc); anything else is the backend's own.
SHARED_METADATA = (
    "backend",
    "version",
    "device",
    "precision",
    "source_model",
    "source_sha256",
    "inputs",
    "shapes",
    "workspace_mb",
    "calibration_samples",
    "denormals_flushed",
)
CalibSource = str | os.PathLike[str] | Mapping[str, np.ndarray]  # a file, an image folder or arrays


@dataclass
class BuildResult:
    """What a build produced: the artifact to run, every file written, and the metadata recorded.

    `not_built` says why the backend's own artifact was not made here (None: it was); `artifact` is
    then what was made instead, an ONNX file the backend named in `runs_on` opens (a TensorRT
    artefact whose engine is built on the device, run on ONNX Runtime CPU)."""

    backend: str
    precision: str
    artifact: Path
    files: list[Path]
    metadata: dict = field(default_factory=dict)
    runs_on: str = ""
    not_built: str | None = None

    def to_json(self) -> dict:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "artifact": str(self.artifact),
            "runs_on": self.runs_on or self.backend,
            "not_built": self.not_built,
            "files": [str(p) for p in self.files],
            "metadata": self.metadata,
        }


class Runner(ABC):
    """An opened artifact: feed numpy arrays by input name, get numpy arrays by output name."""

    input_specs: list[InputSpec]
    output_names: list[str]

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch synchronously and return every output on the host."""

    def close(self) -> None:  # noqa: B027 - most runners have nothing to release
        """Release runtime resources (device memory, contexts)."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class BuildRequest:
    """What the shared steps of `Backend.build` settled, handed to the backend's `_build_artifact`."""

    source: Path  # the user's model file: read, never written
    model: onnx.ModelProto  # loaded from it, denormal weights flushed unless keep_denormals
    flushed: DenormalCount  # what was flushed (nothing with keep_denormals)
    specs: list[InputSpec]
    out_dir: Path  # exists
    artifact: Path  # where the artifact goes (Backend._artifact_path)
    precision: str
    calib: CalibSource | None
    shapes: dict[str, ShapeTriple]  # --shapes as given, or the backend's resolved profile
    run_shapes: RunShapes | None  # --input-shape, else the model's static dims; None: dynamic, none given
    workspace_mb: int | None
    source_sha256: str
    int8: Int8Options = field(default_factory=Int8Options)  # how an int8 build decides (backends/quantize.py)
    sparsity: str | None = None  # a structured sparsity pattern to impose ("2:4"), backends that take one

    def model_file(self, folder: Path) -> Path:
        """The model as a file to build from: the source itself when flushing changed nothing, else
        the flushed model written into `folder` (with external data if the source had it)."""
        if not self.flushed.total:
            return self.source
        return save_model(self.model, folder / self.source.name)


@dataclass(frozen=True)
class ProfileRequest:
    """What `Backend.profile` checked, handed to the backend's `_profile`: the models (label -> model
    file) run interleaved at `batch`, each node's first `warmup` runs dropped and the median of `runs`
    kept, on `threads` intra-op threads, random inputs drawn from `seed` at `shapes` (batch dim set
    to `batch`; None: the models' own dims)."""

    models: Mapping[str, str | os.PathLike[str]]
    batch: int
    warmup: int
    runs: int
    threads: int | None
    seed: int
    shapes: Mapping[str, Sequence[int]] | None


@dataclass
class Built:
    """What a backend's `_build_artifact` wrote: every file (the artifact among them) and the keys
    of its own it adds to the metadata JSON. A backend that did not make the artifact
    `_artifact_path` named says why (`not_built`) and gives the one it made instead, with the
    registered backend that runs it."""

    files: list[Path]
    metadata: dict = field(default_factory=dict)
    artifact: Path | None = None  # None: the request's artifact
    runs_on: str | None = None  # None: this backend
    not_built: str | None = None


class Backend(ABC):
    """A runtime that can build and run ONNX models.

    A backend implements `version`, `device`, `runner`, `_artifact_path` and `_build_artifact`;
    `build` does the steps every backend shares around the last one. What the rest of the package
    may also ask (`timer`, `intermediates`, `profile`) has a default here: a timer that opens models
    with `runner`, and a BackendError for the two that need a runtime's own machinery.
    """

    name: str
    has_profiler: ClassVar[bool] = False  # whether `profile` works (bench --per-layer, run's report)
    # Builds for a range of input shapes (TensorRT's optimisation profile): `run` hands it the
    # recipe's [min, opt, max] batch, and a recipe's bench batches must lie in that range.
    needs_shape_profile: ClassVar[bool] = False
    takes_workspace: ClassVar[bool] = False  # whether --workspace / a recipe's workspace_mb means anything
    takes_sparsity: ClassVar[bool] = False  # whether --sparsity / a recipe's sparsity means anything

    @abstractmethod
    def version(self) -> str:
        """The runtime's version string (recorded in build metadata and benchmark reports)."""

    @abstractmethod
    def device(self) -> str:
        """Where runners execute, in words (CPU model or GPU name)."""

    @abstractmethod
    def runner(
        self, path: str | os.PathLike[str], threads: int | None = None, *, spinning: bool = True
    ) -> Runner:
        """Open an artifact (or a plain ONNX file) for inference. spinning=False when several
        runners are timed in alternation: their idle CPU threads must not wait busily for work."""

    def build(
        self,
        onnx_path: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        precision: str = "fp32",
        calib: CalibSource | None = None,
        shapes: Mapping[str, ShapeTriple] | None = None,
        workspace_mb: int | None = None,
        keep_denormals: bool = False,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        int8: Int8Options | None = None,
        sparsity: str | None = None,
    ) -> BuildResult:
        """Build `onnx_path` for this runtime at `precision`, writing the artifact into `out_dir`,
        and its metadata (one schema for every backend, module doc) beside it as `<artifact>.json`.
        `int8`: which layers run int8 and how it is calibrated (`--int8-layers`, `--calib-method`).

        The steps every backend shares, in order: check the precision; refuse outputs that would
        land on an input (the model, its external data, the calibration data); load the model and
        check --shapes and --input-shape (`input_shapes`: the run's shapes, which a backend that
        needs an optimisation profile builds for where --shapes says nothing) against its inputs;
        refuse int8 without calibration data when the backend needs it; the backend's own checks (`_check`); flush denormal float32 weights unless
        `keep_denormals` (the input file is never touched); build (`_build_artifact`); load every
        artefact written before reporting it built; write the metadata. `sparsity` ("2:4") imposes a
        structured sparsity pattern on the weights, for a backend that `takes_sparsity`.
        """
        check_precision(precision)
        if sparsity is not None and not self.takes_sparsity:
            takers = [name for name in backend_names() if get_backend(name).takes_sparsity]
            raise UsageError(
                f"--sparsity {sparsity}: the {self.name} backend runs weights dense; it applies to "
                f"{' or '.join(takers) or 'no registered backend'}"
            )
        source, out_dir = Path(onnx_path), Path(out_dir)
        artifact = self._artifact_path(out_dir, precision)
        metadata_path = artifact.with_name(artifact.name + ".json")
        outputs = list(  # once each: an artifact may also be one of the files a backend may write
            dict.fromkeys(
                [
                    (artifact, _kind(artifact)),
                    (metadata_path, "file"),
                    *self._extra_outputs(out_dir, precision),
                ]
            )
        )
        _refuse_unsafe_outputs(out_dir, outputs, source, calib, int8.judge if int8 else None)
        model = load_model(source)
        specs = model_input_specs(model)
        run_shapes = shapes_if_known(specs, input_shapes)
        resolved = self._build_shapes(specs, dict(shapes or {}), str(source), run_shapes)
        missing_calibration = None if calib is not None else self._calibration_required(model, precision)
        if missing_calibration:
            raise UsageError(missing_calibration)
        self._check(model, source)
        out_dir.mkdir(parents=True, exist_ok=True)
        flushed = DenormalCount() if keep_denormals else flush_denormals(model)
        request = BuildRequest(
            source=source,
            model=model,
            flushed=flushed,
            specs=specs,
            out_dir=out_dir,
            artifact=artifact,
            precision=precision,
            calib=calib,
            shapes=resolved,
            run_shapes=run_shapes,
            workspace_mb=workspace_mb,
            source_sha256=sha256_model(source),
            int8=int8 or Int8Options(),
            sparsity=sparsity,
        )
        built = self._build_artifact(request)
        artifact = built.artifact or artifact
        metadata_path = artifact.with_name(artifact.name + ".json")
        runs_on = self.name if built.runs_on is None else built.runs_on
        files: list[Path] = []
        for path in built.files:
            files.append(path)
            # An artefact the runtime cannot load is never "built": the artifact is opened by the
            # backend that runs it, every other ONNX file by the reference backend.
            if path == artifact:
                with (self if runs_on == self.name else get_backend(runs_on)).runner(path, threads=1):
                    pass
            elif _kind(path) == "model":
                with get_backend(REFERENCE_BACKEND).runner(path, threads=1):
                    pass
            if _kind(path) == "model":
                files.extend(external_data_files(path))
        metadata = {
            "backend": self.name,
            "version": self.version(),
            "device": self.device(),
            "precision": precision,
            "source_model": str(source),
            "source_sha256": request.source_sha256,
            "inputs": {s.name: [d if isinstance(d, int) else None for d in s.shape] for s in specs},
            "shapes": {name: [list(s) for s in triple] for name, triple in resolved.items()},
            "input_shapes": run_shapes.to_json() if run_shapes else None,
            "workspace_mb": workspace_mb,
            "calibration_samples": None,
            "denormals_flushed": flushed.total,
            **built.metadata,
        }
        write_text(metadata_path, metadata_json(metadata))
        files.append(metadata_path)
        return BuildResult(self.name, precision, artifact, files, metadata, runs_on, built.not_built)

    @abstractmethod
    def _artifact_path(self, out_dir: Path, precision: str) -> Path:
        """Where `build` puts the artifact `runner` opens (its metadata goes beside it)."""

    def _extra_outputs(self, out_dir: Path, precision: str) -> list[tuple[Path, str]]:
        """Other files `build` may write, each with its kind ("model": an ONNX file and its external
        data, or "file"), so that none of them can land on an input."""
        return []

    def _build_shapes(
        self,
        specs: list[InputSpec],
        shapes: dict[str, ShapeTriple],
        source: str,
        run_shapes: RunShapes | None = None,
    ) -> dict[str, ShapeTriple]:
        """The shapes the artifact is built for: --shapes as given, checked against the inputs (a
        backend that needs an optimisation profile for every input resolves it here, from
        `run_shapes` where --shapes says nothing)."""
        check_shapes_match(shapes, specs, source)
        return shapes

    def _calibration_required(self, model: onnx.ModelProto, precision: str) -> str | None:
        """Why `precision` cannot be built without calibration data (None: it can)."""
        if precision == "int8":
            return "--precision int8 needs --calib DATA (calibration inputs for the activation ranges)"
        return None

    def _check(self, model: onnx.ModelProto, source: Path) -> None:  # noqa: B027 - most backends check nothing more
        """The backend's own refusals before anything is written (unsupported ops, runtime missing)."""

    @abstractmethod
    def _build_artifact(self, request: BuildRequest) -> Built:
        """Write the artifact (and whatever goes with it) for `request`; return what was written."""

    def run(self, path: str | os.PathLike[str], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One-shot convenience: open `path`, run `feeds` once, close."""
        with self.runner(path) as runner:
            return runner.run(feeds)

    def timer(self, batch: int, threads: int | None = None) -> Timer:
        """What latency tables and measured corrections time models with, at `batch` (each model
        opened with `runner`; a backend that must build a model before running it overrides this)."""
        return Timer(self, batch, threads)

    def intermediate_batches(
        self,
        model: onnx.ModelProto,
        feeds: Mapping[str, np.ndarray],
        tensors: Sequence[str] | None = None,
        batch_size: int = 32,
    ) -> Iterator[dict[str, np.ndarray]]:
        """The values of the tensors `tensors` of `model` as it is (its outputs when None), one
        dict per batch of `feeds`: what analysis, dead-filter checks and criteria read."""
        raise BackendError(f"the {self.name} backend cannot compute a model's intermediate tensors")

    def intermediates(
        self,
        model: onnx.ModelProto,
        feeds: Mapping[str, np.ndarray],
        tensors: Sequence[str] | None = None,
        batch_size: int = 32,
    ) -> dict[str, np.ndarray]:
        """`intermediate_batches` for every sample of `feeds`, concatenated along the batch."""
        names = None if tensors is None else list(dict.fromkeys(tensors))
        if names == []:
            return {}
        parts: dict[str, list[np.ndarray]] = {}
        for values in self.intermediate_batches(model, feeds, names, batch_size):
            for name, value in values.items():
                parts.setdefault(name, []).append(value)
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}

    def profile(
        self,
        models: Mapping[str, str | os.PathLike[str]],
        batch: int = 1,
        warmup: int = 5,
        runs: int = 20,
        threads: int | None = None,
        seed: int = 0,
        shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> dict[str, LayerProfile]:
        """Per-layer latency of several models (label -> model file) at `batch`, their runs
        interleaved, each node's `warmup` runs dropped and the median of `runs` kept (profiling.py).
        Inputs are fed at `shapes` (batch dim set to `batch`; a dynamic-H/W model needs them).
        Only a backend with `has_profiler` implements `_profile`."""
        if not self.has_profiler:
            raise BackendError(f"the {self.name} backend has no per-layer profiler")
        if warmup < 0 or runs < 1:
            raise UsageError(f"profiling needs warmup >= 0 and runs >= 1, got {warmup} and {runs}")
        return self._profile(ProfileRequest(models, batch, warmup, runs, threads, seed, shapes))

    def _profile(self, request: ProfileRequest) -> dict[str, LayerProfile]:
        """Each model's LayerProfile for `request`, by label."""
        raise NotImplementedError(f"{type(self).__name__} sets has_profiler but has no _profile")


def parse_shapes(specs: list[str] | tuple[str, ...] | str | None) -> dict[str, ShapeTriple]:
    """Parse `name:1x3x32x32,8x3x32x32,32x3x32x32` (min, opt, max) options into shape triples.

    One shape means a fixed shape (min = opt = max); two mean min and max with opt = max.
    """
    if not specs:
        return {}
    if isinstance(specs, str):
        specs = [specs]
    shapes: dict[str, ShapeTriple] = {}
    for spec in specs:
        name, sep, rest = spec.rpartition(":")
        if not sep or not name:
            raise UsageError(
                f"--shapes {spec!r}: expected NAME:MIN[,OPT,MAX] like input:1x3x32x32,8x3x32x32,32x3x32x32"
            )
        dims = [parse_shape(part, f"--shapes {name}:") for part in rest.split(",")]
        if len(dims) not in (1, 2, 3) or len({len(d) for d in dims}) != 1:
            raise UsageError(f"--shapes {spec!r}: give 1 to 3 shapes of the same rank (min, opt, max)")
        if len(dims) == 1:
            dims = dims * 3
        elif len(dims) == 2:
            dims = [dims[0], dims[1], dims[1]]
        lo, opt, hi = dims
        if any(not (a <= b <= c) for a, b, c in zip(lo, opt, hi, strict=True)):
            raise UsageError(f"--shapes {spec!r}: need min <= opt <= max in every dimension")
        shapes[name] = (lo, opt, hi)
    return shapes


def check_shapes_match(shapes: Mapping[str, ShapeTriple], specs: list[InputSpec], source: str) -> None:
    """Every --shapes entry must name a model input, have its rank, and agree with its static dims."""
    by_name = {s.name: s for s in specs}
    for name, triple in shapes.items():
        spec = by_name.get(name)
        if spec is None:
            raise UsageError(f"--shapes names '{name}', but {source} has inputs {', '.join(by_name)}")
        for shape in triple:
            if len(shape) != len(spec.shape) or any(
                isinstance(want, int) and want != got for want, got in zip(spec.shape, shape, strict=True)
            ):
                raise UsageError(
                    f"--shapes {name}: {'x'.join(map(str, shape))} does not fit input '{name}' of {source} "
                    f"with shape {spec.shape_text()}"
                )


def metadata_json(metadata: dict) -> str:
    return json.dumps(metadata, indent=2, sort_keys=True) + "\n"


def _kind(path: Path) -> str:
    return "model" if path.suffix == ".onnx" else "file"


def _refuse_unsafe_outputs(
    out_dir: Path,
    outputs: list[tuple[Path, str]],
    source: Path,
    calib: CalibSource | None,
    judge: CalibSource | None = None,
) -> None:
    """Every file the build may write, against the model (and its external data) and the data."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o {out_dir}: exists and is not a folder")
    calib_path = calib if isinstance(calib, str | os.PathLike) else None
    judge_path = judge if isinstance(judge, str | os.PathLike) else None
    refuse_overlap(
        [item for path, kind in outputs for item in writes("-o", path, kind)],
        [
            *reads("the input model", source, "model"),
            *reads("--calib", calib_path),
            *reads("--judge-data", judge_path),
        ],
    )
