"""The steps of an ONNX Runtime build: optimise, quantise to int8 QDQ, publish (fp16: backends/fp16.py).

`quantize_qdq` is the one-call QDQ quantiser (TensorRT's zero-point-0 scheme by default); the
measured int8 build of ONNX Runtime itself is `int8.build_int8`.

ONNX Runtime's optimiser and quantiser resolve external data against folders of their own (temporary
ones included), so the backend runs them on a copy staged in a private folder; each result is read
back with its weights and checked (`load_written`, `optimize`), and `publish` writes it where it
belongs, with its own data file beside it. The staging folder is gone when the build returns, so no
message names it: errors name the user's model.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from deploysparse.backends.onnxruntime import quantizer
from deploysparse.backends.onnxruntime.quantizer import Quantized
from deploysparse.backends.onnxruntime.runtime import load_onnxruntime
from deploysparse.backends.quantize import TENSORRT, QuantScheme
from deploysparse.calibration import InputSpec, batches, sample_count
from deploysparse.errors import (
    BackendError,
    CalibrationError,
    DeploysparseError,
    InternalError,
    ModelLoadError,
    first_line,
)
from deploysparse.modelio import external_data_files, load_model, save_model

CALIBRATION_BATCH = 32


@dataclass
class Optimized:
    """The graph `optimize` publishes: loaded and checked, at the optimisation level that passed."""

    model: onnx.ModelProto
    providers: list[str]  # the providers the optimising session got
    level: str  # "all", "basic" or "none" (the model as it came)
    reason: str | None = None  # why not "all": the checker's objection to the fuller graph

    def metadata(self) -> dict:
        return {"level": self.level, "reason": self.reason}


def optimize(source: Path, work: Path, providers: list[str]) -> Optimized:
    """ONNX Runtime's graph optimisations applied once to the staged model `source`: the graph
    `build` publishes.

    The published graph is always one the ONNX checker accepts at the model's own opset. ONNX
    Runtime's extended fusions write ops of its own into the ONNX domain: LayerNormalization in an
    opset-12 model (PP-OCRv4's recogniser), where ONNX defines it only from opset 17. ONNX Runtime
    loads such a file; the checker, and every other tool, rejects it. Bumping the artefact's
    opset_import is valid only when no other op of the graph changed meaning between the two opsets,
    and between 12 and 17 Softmax, Squeeze, Unsqueeze, Split and the Reduce ops did; ONNX's version
    converter rewrites those, but not the com.microsoft and NCHWc ops the same optimised graph holds.
    The fusions need not be in the file at all: every session that loads the model with ONNX
    Runtime's default options (deploysparse's included) fuses again at load time, so a graph
    optimised at the basic level (constant folding, Conv+BN and the other rewrites that stay within
    ONNX at the model's opset) runs as fast and costs only the fusing at load. So: all optimisations
    when the checker accepts the result, else the basic ones, else the model as it came (metadata
    `graph_optimization` says which and why).
    """
    rejected: list[str] = []
    session_providers = providers
    for level in ("all", "basic"):
        target = work / f"optimized.{level}.onnx"
        session_providers = _optimize_at(level, source, target, providers)
        try:
            model = load_model(target)
        except ModelLoadError as exc:
            rejected.append(f"the graph optimised at level '{level}' fails the ONNX checker ({_cause(exc)})")
            continue
        return Optimized(model, session_providers, level, _reason(rejected))
    return Optimized(load_model(source), session_providers, "none", _reason(rejected))


def _reason(rejected: list[str]) -> str | None:
    if not rejected:
        return None
    return "; ".join(rejected) + "; ONNX Runtime applies its fusions when a session loads the model"


def _optimize_at(level: str, source: Path, target: Path, providers: list[str]) -> list[str]:
    """Save the graph ONNX Runtime optimises at `level` to `target`; the providers the session got."""
    ort = load_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[level]
    options.log_severity_level = 3
    options.optimized_model_filepath = str(target)
    if external_data_files(source):
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", target.name + ".data"
        )
    try:
        session = ort.InferenceSession(str(source), options, providers=providers)
    except Exception as exc:
        raise BackendError(f"{source}: ONNX Runtime cannot optimise the model ({first_line(exc)})") from exc
    return session.get_providers()


def load_written(staged: Path, what: str, name: str) -> onnx.ModelProto:
    """A model ONNX Runtime wrote into the staging folder, loaded and checked. One the checker rejects
    is a fault of ours (or ONNX Runtime's), not of the user's model `name`: an InternalError (exit
    code 1, --debug for the traceback) naming `what`."""
    try:
        return load_model(staged)
    except ModelLoadError as exc:
        raise InternalError(f"{name}: {what} fails the ONNX checker ({_cause(exc)})") from exc


def _cause(exc: ModelLoadError) -> str:
    """What the checker objected to (the exception it raised), else the load error itself."""
    return first_line(exc.__cause__) if exc.__cause__ is not None else str(exc)


@contextmanager
def naming_the_model(work: Path, name: str) -> Iterator[None]:
    """Errors raised inside name the user's model `name` where they named a file in the staging
    folder `work`, which is gone by the time anyone reads the message."""
    try:
        yield
    except (DeploysparseError, InternalError) as exc:
        text = str(exc)
        if str(work) not in text:
            raise
        raise type(exc)(re.sub(re.escape(str(work)) + r"[^\s'\")]*", name, text)) from exc


def quantize_qdq(
    source: Path,
    specs: list[InputSpec],
    feeds: dict[str, np.ndarray],
    target: Path,
    scheme: QuantScheme = TENSORRT,
) -> Quantized:
    """`source` as a static QDQ model in `scheme`, calibrated on `feeds`, written to `target` (scratch
    files beside it): prepare (opset 13 where per-channel weights need it), calibrate, quantise.

    The default is TensorRT's scheme: symmetric int8 activations and per-channel int8 weights, zero
    point 0 everywhere. ONNX Runtime's own int8 build picks its scheme per CPU and measures its
    choices (`onnxruntime/int8.py`); this is the one-call form for a backend that only needs the QDQ
    model. The result says which scheme was applied (per-tensor weights where the opset stays below 13).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    batches = calibration_batches(specs, feeds, source)
    prepared = quantizer.prepare(source, target.with_name("prepared.onnx"), batches, scheme.per_channel)
    ranges = quantizer.calibrate(
        prepared, batches, scheme.calibration, scheme.symmetric, target.with_name("ranges.json")
    )
    return quantizer.quantize(prepared, ranges, scheme, target)


def publish(model: onnx.ModelProto, target: Path, external: bool) -> Path:
    """Write a model made in the staging folder self-contained at `target` (its weights beside it when
    the source had external data)."""
    return save_model(model, target, external_data=external or None)


def calibration_batches(
    specs: list[InputSpec], feeds: Mapping[str, np.ndarray], source: Path
) -> list[dict[str, np.ndarray]]:
    """`feeds` in batches of CALIBRATION_BATCH, or of the model's static batch when it has one (it
    cannot run any other size)."""
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
