"""The one small interface every backend shares: build an artifact, run it, describe where it runs.

Modelled on polygraphy's loaders and runners: `Backend.build` turns an ONNX file into the artifact the
runtime loads (an optimised ONNX for ONNX Runtime, a serialized engine for TensorRT) plus a JSON file
of metadata beside it; `Backend.runner` opens an artifact and returns a `Runner` whose `run(feeds)`
is the only thing validation and benchmarking call. Keeping the surface this small is what lets
`validate` and `bench` work unchanged on every backend.
"""

from __future__ import annotations

import json
import os
import platform
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from deploysparse.backends.timing import Timer
from deploysparse.calibration import InputSpec
from deploysparse.errors import UsageError
from deploysparse.input_shapes import parse_shape

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
ShapeTriple = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


@dataclass
class BuildResult:
    """What a build produced: the artifact to run, every file written, and the metadata recorded."""

    backend: str
    precision: str
    artifact: Path
    files: list[Path]
    metadata: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "artifact": str(self.artifact),
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


class Backend(ABC):
    """A runtime that can build and run ONNX models."""

    name: str

    @abstractmethod
    def version(self) -> str:
        """The runtime's version string (recorded in build metadata and benchmark reports)."""

    @abstractmethod
    def device(self) -> str:
        """Where runners execute, in words (CPU model or GPU name)."""

    @abstractmethod
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
        """Build `onnx_path` for this runtime at `precision`, writing the artifact into `out_dir`.

        Denormal float32 weights are set to zero in the built artifact unless `keep_denormals`.
        """

    @abstractmethod
    def runner(
        self, path: str | os.PathLike[str], threads: int | None = None, *, spinning: bool = True
    ) -> Runner:
        """Open an artifact (or a plain ONNX file) for inference. spinning=False when several
        runners are timed in alternation: their idle CPU threads must not wait busily for work."""

    def run(self, path: str | os.PathLike[str], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One-shot convenience: open `path`, run `feeds` once, close."""
        with self.runner(path) as runner:
            return runner.run(feeds)

    def timer(self, batch: int, threads: int | None = None) -> Timer:
        """What latency tables and measured corrections time models with, at `batch` (each model
        opened with `runner`; a backend that must build a model before running it overrides this)."""
        return Timer(self, batch, threads)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


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


def cpu_name() -> str:
    """The CPU model and the cores this process may use, e.g. 'Intel Xeon ... (2 cores)'."""
    model = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            model = match.group(1).strip()
    except OSError:
        pass
    return f"{model} ({usable_cores()} cores)"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def metadata_json(metadata: dict) -> str:
    return json.dumps(metadata, indent=2, sort_keys=True) + "\n"
