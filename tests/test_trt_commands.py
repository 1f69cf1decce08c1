"""The trtexec and polygraphy lines that build an engine on the device (backends/trt_commands.py): only
flags TensorRT 10 and 11 accept, the artefact's own input names, the profile's shapes."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from deploysparse.backends.trt_commands import PRECISION_FLAGS, engine_commands
from deploysparse.backends.trt_versions import TrtVersion
from deploysparse.calibration import InputSpec

# Every flag the strongly typed build may carry: each is in trtexec's help from TensorRT 10.0 to 11.x.
TRT_10_11_FLAGS = {
    "--onnx",
    "--saveEngine",
    "--stronglyTyped",
    "--minShapes",
    "--optShapes",
    "--maxShapes",
    "--timingCacheFile",
    "--memPoolSize",
    "--sparsity",
    "--skipInference",
}
PROFILE = {
    "image": ((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32)),
    "mask": ((1, 1, 32, 32), (8, 1, 32, 32), (32, 1, 32, 32)),
}
SPECS = [
    InputSpec("image", ("N", 3, 32, 32), np.dtype(np.float32)),
    InputSpec("mask", ("N", 1, 32, 32), np.dtype(np.float32)),
]


def _flags(line: str) -> dict[str, str]:
    words = shlex.split(line)
    assert words[0] == "trtexec"
    return dict(w.split("=", 1) if "=" in w else (w, "") for w in words[1:])


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("version", [TrtVersion(10, 0), TrtVersion(10, 15), TrtVersion(11, 1)])
def test_strongly_typed_commands_carry_no_precision_flag(precision, version):
    commands = engine_commands(
        f"model.{precision}.onnx",
        "model.engine",
        SPECS,
        PROFILE,
        trt_version=version,
        precision=precision,
        workspace_mb=1024,
        sparse=True,
    )
    flags = _flags(commands.trtexec)
    assert set(flags) <= TRT_10_11_FLAGS, set(flags) - TRT_10_11_FLAGS
    assert not set(flags) & set(PRECISION_FLAGS) and "--stronglyTyped" in flags
    assert flags["--onnx"] == f"model.{precision}.onnx" and flags["--saveEngine"] == "model.engine"
    assert flags["--minShapes"] == "image:1x3x32x32,mask:1x1x32x32"
    assert flags["--optShapes"] == "image:8x3x32x32,mask:8x1x32x32"
    assert flags["--maxShapes"] == "image:32x3x32x32,mask:32x1x32x32"
    assert flags["--memPoolSize"] == "workspace:1024" and flags["--sparsity"] == "enable"
    polygraphy = shlex.split(commands.polygraphy)
    assert polygraphy[:3] == ["polygraphy", "convert", f"model.{precision}.onnx"]
    assert "--strongly-typed" in polygraphy and "--sparse-weights" in polygraphy
    assert not set(polygraphy) & {"--fp16", "--int8", "--calibration-cache"}
    at = polygraphy.index("--trt-opt-shapes")
    assert polygraphy[at + 1 : at + 3] == ["image:[8,3,32,32]", "mask:[8,1,32,32]"]
    assert commands.runs_on == "TensorRT 10.0 or later" and not commands.notes


def test_tensorrt_8_gets_the_weakly_typed_flags_with_a_deprecation_note():
    commands = engine_commands(
        "model.int8.onnx", "model.engine", SPECS, PROFILE, trt_version=TrtVersion(8, 6), precision="int8"
    )
    flags = _flags(commands.trtexec)
    assert "--stronglyTyped" not in flags and {"--int8", "--fp16"} <= set(flags)
    assert "--sparsity" not in flags and "--memPoolSize" not in flags
    assert "deprecated" in commands.notes[0] and commands.runs_on == "TensorRT 8.x"


def test_a_static_model_gets_no_shape_flags_and_odd_names_are_quoted():
    static = [InputSpec("input:0", (1, 3, 8, 8), np.dtype(np.float32))]
    commands = engine_commands(
        "model.fp16.onnx",
        "model.engine",
        static,
        {"input:0": ((1, 3, 8, 8),) * 3},
        trt_version=TrtVersion(10, 15),
        precision="fp16",
    )
    assert not {"--minShapes", "--optShapes", "--maxShapes"} & set(
        _flags(commands.trtexec)
    )  # trtexec refuses them
    dynamic = [InputSpec("input:0", ("N", 3, 8, 8), np.dtype(np.float32))]
    commands = engine_commands(
        "model.fp16.onnx",
        "model.engine",
        dynamic,
        {"input:0": ((1, 3, 8, 8),) * 3},
        trt_version=TrtVersion(10, 15),
        precision="fp16",
    )
    assert _flags(commands.trtexec)["--minShapes"] == "'input:0':1x3x8x8"  # trtexec's quoting of a ':'
    script = commands.script(["a header line"])
    assert script.startswith("#!/bin/sh\n# a header line\n") and commands.trtexec in script.splitlines()
