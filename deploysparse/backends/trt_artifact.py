"""The artefact a TensorRT engine is built from, made and proven before any GPU sees it.

TensorRT 10 builds strongly typed networks and TensorRT 11 builds nothing else: the engine computes
in the precision its ONNX holds (explicit casts, Q/DQ nodes), not in one a builder flag picks. So
the precision is decided here, where it can be measured, and the ONNX is the deliverable:

  compact fp32 ONNX (denormals flushed)
    -> [--sparsity 2:4: the qualifying layers' weights pruned 2:4; the change measured]
    -> fp16: casts, fp32 kept where fp16 fails (fp16.py) | int8: symmetric S8 Q/DQ | fp32: as is
    -> the support check of the target TensorRT version (Q/DQ zero points 0, ...)
    -> validated on ONNX Runtime CPU against the fp32 model: error, cosine, top-1 agreement
    -> the trtexec and polygraphy command lines that build the engine on the device

`model.<precision>.onnx`, `build-engine.sh` and the metadata make an output folder a person can copy
to a Jetson and build from. An artefact that fails its validation gets no commands and no engine.

int8 goes through ONE call of the quantiser (`_quantize_int8`), today ONNX Runtime's static QDQ
quantisation, symmetric with zero point 0 (backends/onnxruntime/build.py); a model that already
holds Q/DQ nodes is its own artefact.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from deploysparse.atomic import write_text
from deploysparse.backends import REFERENCE_BACKEND
from deploysparse.backends.base import BuildRequest
from deploysparse.backends.feeds import make_feeds
from deploysparse.backends.fp16 import convert_fp16
from deploysparse.backends.trt_commands import SCRIPT, EngineCommands, engine_commands
from deploysparse.backends.trt_sparsity import sparsify_2_4
from deploysparse.backends.trt_support import check_onnx
from deploysparse.backends.trt_versions import TrtVersion
from deploysparse.calibration import InputSpec, load_calibration, model_input_specs, sample_count
from deploysparse.errors import BackendError
from deploysparse.graph.rules import attr, runs_int8
from deploysparse.modelio import load_model, needs_external_data, save_model
from deploysparse.precision import DEFAULT_TOLERANCES, Tolerances
from deploysparse.records import attribute_record

RANDOM_SAMPLES = 32  # validation inputs when no calibration data is given: random, never zeros
ENGINE = "model.engine"
TIMING_CACHE = "timing.cache"  # tactic timings, reused by the next build in the same folder


def artifact_name(precision: str) -> str:
    return f"model.{precision}.onnx"


@dataclass
class Artefact:
    """The ONNX an engine is built from, the files written, the metadata, and whether it passed."""

    path: Path
    files: list[Path]
    metadata: dict = field(default_factory=dict)
    passed: bool = True

    @property
    def failure(self) -> str | None:
        """Why the artefact is refused (None when it passed)."""
        if self.passed:
            return None
        failures = [
            *self.metadata["artifact_validation"]["failures"],
            *((self.metadata.get("fp16") or {}).get("simulated_validation") or {}).get("failures", []),
        ]
        return f"{self.path.name} fails its validation against the fp32 model: {failures[0]}"


def prepare_artifact(request: BuildRequest, trt_version: TrtVersion) -> Artefact:
    """Write `model.<precision>.onnx` for `request` and prove it (module doc); with `build-engine.sh`
    when it passes."""
    out_dir, precision = request.out_dir, request.precision
    feeds = load_calibration(request.calib, request.specs) if request.calib is not None else None
    data = feeds if feeds is not None else _random_feeds(request.specs, request.shapes)
    described = f"{sample_count(feeds)} calibration samples" if feeds is not None else _random_text(data)
    metadata: dict = {"trt_version": str(trt_version), "strongly_typed": trt_version.strongly_typed}
    path = out_dir / artifact_name(precision)
    with tempfile.TemporaryDirectory(prefix=".artefact-", dir=out_dir) as work_dir:
        work = Path(work_dir)
        fp32 = request.model
        if request.sparsity is not None:
            sparse = sparsify_2_4(fp32)
            change = _compare(fp32, sparse.model, data, work, "fp32", Tolerances(None, None, None))
            metadata["sparsity"] = {**sparse.to_json(), "change": {**_figures(change), "data": described}}
            fp32 = sparse.model
        fp32_file = save_model(fp32, work / "fp32.onnx", external_data=needs_external_data(fp32))
        if precision == "fp16":
            conversion = convert_fp16(fp32, feeds)
            save_model(conversion.model, path, external_data=needs_external_data(conversion.model))
            metadata["fp16"] = conversion.to_json()
        elif precision == "int8":
            metadata.update(_int8(fp32, fp32_file, request, feeds, work, path))
        else:
            save_model(fp32, path, external_data=needs_external_data(fp32))
        artefact = load_model(path)
        support = check_onnx(artefact, trt_version)
        if not support.ok:
            raise BackendError(f"{path}: {support.summary()}")
        metadata["support"] = {"table": support.table, "warnings": support.warnings}
        validation = _compare(fp32_file, path, data, work, precision, DEFAULT_TOLERANCES[precision])
    metadata["artifact_onnx"] = path.name
    metadata["artifact_validation"] = {**validation.to_json(), "data": described}
    metadata["calibration_samples"] = sample_count(feeds) if feeds is not None else None
    simulated = (metadata.get("fp16") or {}).get("simulated_validation")  # fp16 storage, calibration data
    result = Artefact(
        path, [path], metadata, validation.passed and (simulated is None or simulated["passed"])
    )
    script = out_dir / SCRIPT
    if not result.passed:
        script.unlink(missing_ok=True)  # an earlier build's commands must not outlive its artefact
        return result
    commands = engine_commands(
        path.name,
        ENGINE,
        model_input_specs(artefact),
        request.shapes,
        trt_version=trt_version,
        precision=precision,
        workspace_mb=request.workspace_mb,
        sparse=request.sparsity is not None,
        timing_cache=TIMING_CACHE,
    )
    write_text(script, commands.script(_script_header(request, path.name, commands)))
    result.files.append(script)
    metadata["commands"] = commands.to_json()
    return result


def _int8(
    fp32: onnx.ModelProto,
    fp32_file: Path,
    request: BuildRequest,
    feeds: Mapping[str, np.ndarray] | None,
    work: Path,
    target: Path,
) -> dict:
    """The int8 artefact at `target`: the model itself when it holds Q/DQ nodes, else quantised; an
    int32 bias dequantisation in either is folded into a float bias (`float_biases`)."""
    if runs_int8(fp32.graph):
        qdq, metadata = fp32, {"int8_mode": "explicit Q/DQ: the model's own"}
    else:
        if feeds is None:  # Backend.build refuses int8 without data before this point
            raise BackendError("int8 needs calibration data")
        qdq = _quantize_int8(fp32_file, request.specs, feeds, work)
        metadata = {
            "int8_mode": "explicit Q/DQ, calibrated here",
            "quantization": "static QDQ, symmetric int8 activations and per-channel int8 weights, MinMax",
        }
    folded = float_biases(qdq)
    if folded:
        metadata["float_biases"] = folded
    save_model(qdq, target, external_data=needs_external_data(qdq))
    return metadata


def _quantize_int8(
    fp32_file: Path, specs: list[InputSpec], feeds: Mapping[str, np.ndarray], work: Path
) -> onnx.ModelProto:
    """The one call of the quantiser for TensorRT artefacts: symmetric S8 Q/DQ, zero point 0."""
    from deploysparse.backends.onnxruntime import build

    return load_model(build.quantize_qdq(fp32_file, specs, dict(feeds), work / "int8.onnx").path)


def float_biases(model: onnx.ModelProto) -> int:
    """Replace, in place, every DequantizeLinear of a stored int32 tensor (a bias ONNX Runtime's
    quantiser stores as int32, which TensorRT's parser refuses: onnx/onnx-tensorrt#850) by the float32
    values it computes, (q - zero point) x scale, as ONNX Runtime computes them; return how many. The
    outputs do not change: TensorRT adds a float bias after its int8 convolution anyway."""
    stored = {t.name: t for t in model.graph.initializer}
    folded = []
    for node in model.graph.node:
        source = stored.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if source is None or source.data_type != onnx.TensorProto.INT32:
            continue
        values = onnx.numpy_helper.to_array(source).astype(np.float32)
        scale = onnx.numpy_helper.to_array(stored[node.input[1]]).astype(np.float32)
        zero = (
            onnx.numpy_helper.to_array(stored[node.input[2]]) if len(node.input) > 2 and node.input[2] else 0
        )
        if scale.ndim:  # per-axis: scale and zero point run along `axis`
            shape = [1] * values.ndim
            shape[int(attr(node, "axis", 1)) % values.ndim] = -1
            scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
        floats = (values - np.asarray(zero, np.float32)) * scale
        model.graph.initializer.append(
            onnx.numpy_helper.from_array(floats.astype(np.float32), node.output[0])
        )
        folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    read = {name for node in folded for name in node.input}
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    for tensor in [t for t in model.graph.initializer if t.name in read and t.name not in used]:
        model.graph.initializer.remove(tensor)  # the int32 values, scales and zero points folded away
    return len(folded)


def _compare(
    original: onnx.ModelProto | Path,
    candidate: onnx.ModelProto | Path,
    data: Mapping[str, np.ndarray],
    work: Path,
    precision: str,
    tolerances: Tolerances,
):
    """`candidate` against `original` on `data`, both on the reference backend (ONNX Runtime CPU)."""
    from deploysparse.validate import validate

    paths = []
    for index, model in enumerate((original, candidate)):
        if isinstance(model, onnx.ModelProto):
            model = save_model(
                model, work / f"compare-{index}.onnx", external_data=needs_external_data(model)
            )
        paths.append(model)
    return validate(
        paths[0],
        paths[1],
        data,
        backend=REFERENCE_BACKEND,
        atol=tolerances.atol,
        rtol=tolerances.rtol,
        min_cosine=tolerances.min_cosine,
        min_top1=tolerances.min_top1,
        max_accuracy_drop=tolerances.max_accuracy_drop,
        precision=precision,
    )


def _figures(report) -> dict:
    return attribute_record(report, "samples", "max_abs_err", "max_rel_err", "cosine", "top1_agreement")


def _random_feeds(specs: list[InputSpec], profile: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """RANDOM_SAMPLES random inputs at the profile's OPT shape (whole batches of a static batch)."""
    shapes = {name: triple[1] for name, triple in profile.items()}
    static = {s.batch_dim for s in specs if isinstance(s.batch_dim, int)}
    if not static:
        return make_feeds(specs, shapes, batch=RANDOM_SAMPLES, seed=0, source="the model")
    batch = static.pop()
    parts = [
        make_feeds(specs, shapes, seed=i, source="the model") for i in range(-(-RANDOM_SAMPLES // batch))
    ]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _random_text(feeds: Mapping[str, np.ndarray]) -> str:
    return f"{sample_count(feeds)} random inputs (no calibration data: give --calib to judge on real data)"


def _script_header(request: BuildRequest, artefact: str, commands: EngineCommands) -> list[str]:
    from deploysparse import __version__

    return [
        f"Builds {ENGINE} from {artefact} on the device that will run it, with {commands.runs_on}",
        f"(ops checked against the TensorRT {commands.trt_version} support table).",
        f"Written by deploysparse {__version__} from {request.source.name} (sha256 {request.source_sha256[:16]}...);",
        f"{artefact} was validated against the fp32 model on ONNX Runtime CPU (the .json beside it).",
        f"Run: sh {SCRIPT}",
    ]
