"""The command lines that build the engine on the device: `trtexec` and `polygraphy convert`.

An engine runs only on the TensorRT version and GPU that built it, so it is usually built on the
target (a Jetson) from the artefact deploysparse wrote and validated. These are the commands for
that: the artefact's own input names with the optimisation profile's shapes (only for inputs with a
dynamic dimension: trtexec refuses shapes for a static model), the timing cache beside it, the
workspace limit, and the precision as the artefact holds it.

For TensorRT 10 and later the network is strongly typed (`--stronglyTyped`, polygraphy's
`--strongly-typed`): the casts and Q/DQ nodes of the artefact decide every layer's precision, and no
precision flag is written (TensorRT 11 removed --fp16, --int8, --best and --calib; its trtexec
accepts --stronglyTyped as a no-op, so the same line builds on both). For TensorRT 8.x the weakly
typed flags are the only way (`--fp16`, `--int8 --fp16` for a Q/DQ artefact), and the commands say
they are deprecated. Flags as documented by trtexec's help in TensorRT 10.0-10.16 and 11.0
(samples/common/sampleOptions.cpp) and polygraphy 0.49+ (`polygraphy convert --help`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from deploysparse.backends.base import ShapeTriple
from deploysparse.backends.trt_versions import TrtVersion
from deploysparse.calibration import InputSpec

SCRIPT = "build-engine.sh"
# Precision flags that TensorRT 11 removed and that a strongly typed build must not carry.
PRECISION_FLAGS = ("--fp16", "--bf16", "--fp8", "--int4", "--int8", "--best", "--calib")


@dataclass(frozen=True)
class EngineCommands:
    """The two command lines (run in the folder that holds the artefact) and what to know about them."""

    trtexec: str
    polygraphy: str
    trt_version: TrtVersion
    notes: list[str] = field(default_factory=list)

    def script(self, header: Sequence[str]) -> str:
        """A POSIX shell script that runs the trtexec line from its own folder (the polygraphy line as
        a comment), with `header` lines as comments on top."""
        lines = ["#!/bin/sh", *(f"# {line}" for line in header), *(f"# note: {n}" for n in self.notes)]
        lines += [
            "set -e",
            'cd "$(dirname "$0")"',
            self.trtexec,
            "",
            "# or, with polygraphy:",
            f"# {self.polygraphy}",
        ]
        return "\n".join(lines) + "\n"

    @property
    def runs_on(self) -> str:
        """The TensorRT releases these lines run on, in words."""
        return (
            "TensorRT 10.0 or later"
            if self.trt_version.strongly_typed
            else f"TensorRT {self.trt_version.major}.x"
        )

    def to_json(self) -> dict:
        return {
            "trt_version": str(self.trt_version),
            "runs_on": self.runs_on,
            "trtexec": self.trtexec,
            "polygraphy": self.polygraphy,
            "script": SCRIPT,
            "notes": self.notes,
        }


def engine_commands(
    artifact: str,
    engine: str,
    specs: Sequence[InputSpec],
    profile: Mapping[str, ShapeTriple],
    *,
    trt_version: TrtVersion,
    precision: str,
    workspace_mb: int | None = None,
    sparse: bool = False,
    timing_cache: str = "timing.cache",
) -> EngineCommands:
    """The trtexec and polygraphy lines that build `engine` from the ONNX `artifact` (file names
    relative to the folder they run in), whose inputs are `specs`, with the optimisation `profile`."""
    dynamic = [s.name for s in specs if any(not isinstance(d, int) for d in s.shape)]
    notes: list[str] = []
    trtexec = ["trtexec", f"--onnx={artifact}", f"--saveEngine={engine}"]
    polygraphy = ["polygraphy", "convert", artifact, "--convert-to", "trt", "-o", engine]
    if trt_version.strongly_typed:
        trtexec.append("--stronglyTyped")
        polygraphy.append("--strongly-typed")
    else:
        flags = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}[precision]
        trtexec += flags
        polygraphy += flags
        if flags:
            notes.append(
                f"TensorRT {trt_version} builds weakly typed networks: {' '.join(flags)} lets it pick layer "
                "precisions (deprecated since TensorRT 10.12, removed in 11); build on TensorRT 10 or later "
                "for the strongly typed engine whose numerics were validated"
            )
    for flag, poly_flag, which in (
        ("--minShapes", "--trt-min-shapes", 0),
        ("--optShapes", "--trt-opt-shapes", 1),
        ("--maxShapes", "--trt-max-shapes", 2),
    ):
        if dynamic:
            trtexec.append(
                f"{flag}=" + ",".join(f"{_trtexec_name(n)}:{_dims(profile[n][which], 'x')}" for n in dynamic)
            )
            polygraphy += [poly_flag, *(f"{n}:[{_dims(profile[n][which], ',')}]" for n in dynamic)]
    trtexec.append(f"--timingCacheFile={timing_cache}")
    polygraphy += ["--load-timing-cache", timing_cache, "--save-timing-cache", timing_cache]
    if workspace_mb is not None:
        trtexec.append(f"--memPoolSize=workspace:{workspace_mb}")  # MiB when no unit is given
        polygraphy += ["--pool-limit", f"workspace:{workspace_mb}M"]
    if sparse:
        trtexec.append("--sparsity=enable")
        polygraphy.append("--sparse-weights")
    trtexec.append("--skipInference")
    if any("," in n for n in dynamic):
        notes.append(
            "an input name holds ',', which trtexec's shape lists cannot carry: use the polygraphy line"
        )
    return EngineCommands(_line(trtexec), _line(polygraphy), trt_version, notes)


def _dims(shape: Sequence[int], separator: str) -> str:
    return separator.join(str(int(d)) for d in shape)


def _trtexec_name(name: str) -> str:
    """trtexec splits NAME:DIMS at the last ':'; a name holding ':' goes in single quotes."""
    return f"'{name}'" if ":" in name else name


def _line(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)
