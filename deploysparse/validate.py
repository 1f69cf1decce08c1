"""Does the compact model still compute the same function? Run both on the same data and measure.

Pruning dead filters should change nothing beyond float rounding; pruning redundant ones, or INT8,
changes outputs a little and predictions hardly at all. The report therefore carries both kinds of
evidence, per output: element-wise error, cosine similarity, top-1 agreement for (N, classes)
outputs, and accuracy against labels when given. `passed` is False as soon as one criterion is not
met, and `failures` says which criterion failed and by how much.

An element passes when |compact - original| <= atol + rtol * |original| (numpy's `isclose`, and
polygraphy's combined check): the tolerance follows the output's scale, so logits in the thousands
and probabilities near zero are judged alike. The relative error printed is the largest error over
the largest |original| of that output, a figure that means something even where outputs cross zero
(an element-wise ratio there is a division by rounding noise). Default tolerances follow the
precision being validated: float32 rounding for fp32, half precision for fp16, and for int8 no
element-wise bound at all (quantisation moves every value), only cosine and top-1 agreement.

The original always runs on ONNX Runtime (the reference); the compact model runs on the chosen
backend (an .onnx on ONNX Runtime, or a built engine on TensorRT).

Data the model says nothing about: a DB text detector fed random pixels outputs a probability map of
~0 everywhere (PP-OCRv4's largest value is 2e-4 at 320x320). Cosine and top-1 agreement of two
vectors of rounding noise are noise (an int8 model rounds the map to exact zeros: cosine 0), so an
output whose original values all lie within NEAR_ZERO of 0 is judged element-wise only, and the
report says so (`reference_near_zero`, a line in `warnings` asking for real inputs). When no
element-wise bound applies either (int8's defaults), nothing about that output was checked: that is
a failure, not a pass, so a CI gate never passes on data that could not show a difference.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploysparse import progress
from deploysparse.agreement import cosine, same_top1
from deploysparse.backends import DEFAULT_BACKEND, get_backend, reference_backend
from deploysparse.backends.base import Runner
from deploysparse.calibration import InputSpec, batches, load_calibration, sample_count
from deploysparse.errors import CalibrationError, UsageError
from deploysparse.precision import (
    DEFAULT_PRECISION,
    DEFAULT_TOLERANCES,
    PRECISIONS,
    Tolerances,
    check_precision,
)
from deploysparse.run_shapes import RunShapes, resolve_shapes

DEFAULT_BATCH = 32
# An output whose original values all lie within this of 0 on the data says nothing about the model:
# probabilities and scores (0..1) this small mean "nothing here", and their cosine is rounding noise.
NEAR_ZERO = 1e-3


class _PrecisionDefault:
    """Marks a tolerance argument left to the precision's default (None means: check switched off)."""

    def __repr__(self) -> str:
        return "PRECISION_DEFAULT"


PRECISION_DEFAULT: Any = _PrecisionDefault()


def detect_precision(model: str | os.PathLike[str]) -> str:
    """fp32, fp16 or int8: from the graph of an .onnx (Q/DQ ops, float16 weights), or from the
    `.json` metadata a TensorRT build writes beside its engine."""
    path = Path(model)
    metadata = path.with_name(path.name + ".json")
    if path.suffix.lower() != ".onnx":
        try:
            value = json.loads(metadata.read_text(encoding="utf-8")).get("precision")
        except (OSError, ValueError, AttributeError):
            value = None
        return value if value in PRECISIONS else DEFAULT_PRECISION
    from deploysparse.graph.rules import runs_int8

    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return DEFAULT_PRECISION  # the runner reports an unreadable model with its name
    if runs_int8(proto.graph):
        return "int8"
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in proto.graph.initializer):
        return "fp16"
    return DEFAULT_PRECISION


def resolve_tolerances(precision: str, **given: Any) -> Tolerances:
    """The precision's defaults, overridden by every tolerance given (None: that check off)."""
    base = asdict(DEFAULT_TOLERANCES[check_precision(precision)])
    for key, value in given.items():
        if value is PRECISION_DEFAULT:
            continue
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise UsageError(f"{key} must be a finite number >= 0 or off, got {value!r}")
        base[key] = value
    return Tolerances(**base)


@dataclass
class OutputReport:
    """The comparison of one output over every sample."""

    name: str
    shape: list[int]
    max_abs_err: float
    max_rel_err: float
    mean_abs_err: float
    cosine: float
    top1_agreement: float | None
    within_tolerance: bool
    reference_scale: float = 0.0  # largest |original| of this output
    elements: int = 0
    violations: int = 0  # elements outside atol + rtol * |original|
    worst_error: float = 0.0  # the element furthest outside its bound (relative to that bound) ...
    worst_allowed: float = 0.0  # ... and the error its bound allowed
    worst_reference: float = 0.0  # ... and its original value
    nonfinite: int = 0  # NaN/Inf in the compact output where the original is finite
    top1_differ: int = 0
    reference_near_zero: bool = False  # max |original| <= NEAR_ZERO: cosine and top-1 not judged


@dataclass
class ValidationReport:
    """Everything `deploysparse validate` prints; `passed` decides the exit code."""

    original: str
    compact: str
    backend: str
    samples: int
    outputs: list[OutputReport]
    tolerances: Tolerances
    precision: str = DEFAULT_PRECISION
    accuracy_original: float | None = None
    accuracy_compact: float | None = None
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what the data could not show (module doc)
    shapes: RunShapes | None = None  # the input shapes validated at (the data's) and their source

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def max_abs_err(self) -> float:
        return max(o.max_abs_err for o in self.outputs)

    @property
    def max_rel_err(self) -> float:
        return max(o.max_rel_err for o in self.outputs)

    @property
    def cosine(self) -> float:
        return min(o.cosine for o in self.outputs)

    @property
    def top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    def to_json(self) -> dict:
        data = {
            "passed": self.passed,
            "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err,
            "cosine": self.cosine,
            "top1_agreement": self.top1_agreement,
            "samples": self.samples,
            "backend": self.backend,
            "original": self.original,
            "compact": self.compact,
            "tolerances": asdict(self.tolerances),
            "precision": self.precision,
            "outputs": [asdict(o) for o in self.outputs],
            "failures": self.failures,
            "warnings": self.warnings,
            "input_shapes": self.shapes.to_json() if self.shapes else None,
        }
        if self.accuracy_original is not None:
            data["accuracy_original"] = self.accuracy_original
            data["accuracy_compact"] = self.accuracy_compact
        return data


def validate(
    original: str | os.PathLike[str],
    compact: str | os.PathLike[str],
    data: str | os.PathLike[str] | Mapping[str, np.ndarray],
    labels: str | os.PathLike[str] | np.ndarray | None = None,
    backend: str = DEFAULT_BACKEND,
    atol: float | None = PRECISION_DEFAULT,
    rtol: float | None = PRECISION_DEFAULT,
    min_cosine: float | None = PRECISION_DEFAULT,
    min_top1: float | None = PRECISION_DEFAULT,
    max_accuracy_drop: float | None = PRECISION_DEFAULT,
    batch_size: int = DEFAULT_BATCH,
    threads: int | None = None,
    precision: str | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> ValidationReport:
    """Run `original` and `compact` on `data` in batches and compare every output.

    Tolerances left out take the defaults of `precision` (detected from `compact` when None); None
    switches a check off. `input_shapes` (--input-shape) must agree with the data's samples: the
    data is what runs."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"--batch must be a positive integer, got {batch_size!r}")
    precision = precision or detect_precision(compact)
    tolerances = resolve_tolerances(
        precision,
        atol=atol,
        rtol=rtol,
        min_cosine=min_cosine,
        min_top1=min_top1,
        max_accuracy_drop=max_accuracy_drop,
    )
    reference = reference_backend()
    with (
        reference.runner(original, threads=threads) as ref,
        get_backend(backend).runner(compact, threads) as cmp,
    ):
        feeds = load_calibration(data, ref.input_specs)
        shapes = _data_shapes(ref.input_specs, feeds, input_shapes)
        _check_same_inputs(ref.input_specs, cmp.input_specs, str(compact))
        if len(ref.output_names) != len(cmp.output_names):
            raise UsageError(
                f"{compact} has {len(cmp.output_names)} outputs but {original} has {len(ref.output_names)}"
            )
        batch, static = _batch_size(ref.input_specs + cmp.input_specs, batch_size, sample_count(feeds))
        outputs_ref, outputs_cmp = _run_both(ref, cmp, feeds, batch, static)
    return compare_outputs(
        outputs_ref,
        outputs_cmp,
        tolerances,
        original=str(original),
        compact=str(compact),
        backend=backend,
        precision=precision,
        labels=labels,
        shapes=shapes,
    )


def compare_outputs(
    outputs_ref: Mapping[str, np.ndarray],
    outputs_cmp: Mapping[str, np.ndarray],
    tolerances: Tolerances,
    *,
    original: str,
    compact: str,
    backend: str,
    precision: str,
    labels: str | os.PathLike[str] | np.ndarray | None = None,
    shapes: RunShapes | None = None,
) -> ValidationReport:
    """The report on outputs already computed (keyed alike): what `validate` prints, for callers that
    run the models themselves (a build judging a candidate artefact against its fp32 source).
    `shapes`: the input shapes the outputs were computed at, for the report."""
    samples = len(next(iter(outputs_ref.values())))
    report = ValidationReport(
        original=original,
        compact=compact,
        backend=backend,
        samples=samples,
        outputs=[],
        tolerances=tolerances,
        precision=precision,
        shapes=shapes,
    )
    for name in outputs_ref:
        report.outputs.append(_compare(name, outputs_ref[name], outputs_cmp[name], tolerances))
    if labels is not None:
        _score_accuracy(report, dict(outputs_ref), dict(outputs_cmp), labels, samples)
    report.failures = _failures(report, tolerances)
    report.warnings = _near_zero_warnings(report, tolerances)
    return report


def _data_shapes(
    specs: list[InputSpec], feeds: Mapping[str, np.ndarray], given: Mapping[str, Sequence[int]] | None
) -> RunShapes:
    """The shapes validated at: the data's; a given --input-shape that differs from them is refused."""
    from_data = resolve_shapes(specs, data=feeds)
    if given:
        wanted = resolve_shapes(specs, given)
        for name, dims in wanted.shapes.items():
            if dims[1:] != from_data.shapes[name][1:]:
                raise UsageError(
                    f"--input-shape {name}:{'x'.join(map(str, dims))}, but the data's samples of '{name}' are "
                    f"{'x'.join(map(str, from_data.shapes[name][1:]))}: validation runs the data as it is"
                )
    return from_data


def _check_same_inputs(ref: list[InputSpec], cmp: list[InputSpec], compact: str) -> None:
    ref_names, cmp_names = [s.name for s in ref], [s.name for s in cmp]
    if sorted(ref_names) != sorted(cmp_names):
        raise UsageError(f"{compact} has inputs {cmp_names} but the original has {ref_names}")


def _batch_size(specs: list[InputSpec], requested: int, samples: int) -> tuple[int, bool]:
    """A static batch dim in either model decides (and is returned as static); otherwise the requested size."""
    static = {s.batch_dim for s in specs if isinstance(s.batch_dim, int)}
    if len(static) > 1:
        raise UsageError(f"the two models have different static batch sizes {sorted(static)}")
    if not static:
        return requested, False
    batch = static.pop()
    if batch > samples:
        raise CalibrationError(f"the models need batches of {batch} samples but the data holds {samples}")
    return batch, True


def _run_both(
    ref: Runner, cmp: Runner, feeds: dict[str, np.ndarray], batch: int, static: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Outputs of both models over the data, concatenated; compact outputs keyed like the original's.

    A static-batch model cannot run a short last batch, so those leftover samples are skipped.
    """
    if set(cmp.output_names) == set(ref.output_names):
        rename = {n: n for n in cmp.output_names}
    else:
        rename = dict(zip(cmp.output_names, ref.output_names, strict=True))
    collected_ref: dict[str, list[np.ndarray]] = {n: [] for n in ref.output_names}
    collected_cmp: dict[str, list[np.ndarray]] = {n: [] for n in ref.output_names}
    total = -(-sample_count(feeds) // batch)
    with progress.progress("validating", total=total) as advance:
        for item in batches(feeds, batch):
            if static and sample_count(item) != batch:
                break
            for name, value in ref.run(item).items():
                collected_ref[name].append(value)
            for name, value in cmp.run(item).items():
                collected_cmp[rename[name]].append(value)
            advance(1)
    return (
        {n: np.concatenate(v) for n, v in collected_ref.items()},
        {n: np.concatenate(v) for n, v in collected_cmp.items()},
    )


def _compare(name: str, ref: np.ndarray, cmp: np.ndarray, tol: Tolerances) -> OutputReport:
    if ref.shape != cmp.shape:
        raise UsageError(
            f"output '{name}': the compact model returns shape {cmp.shape}, the original {ref.shape}"
        )
    a, b = ref.astype(np.float64).ravel(), cmp.astype(np.float64).ravel()
    both = np.isfinite(a) & np.isfinite(b)
    nonfinite = int(np.count_nonzero(np.isfinite(a) & ~np.isfinite(b)))
    a_ok, b_ok = a[both], b[both]
    diff = np.abs(a_ok - b_ok)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(a_ok).max()) if a_ok.size else 0.0
    report = OutputReport(
        name=name,
        shape=list(ref.shape),
        max_abs_err=max_abs,
        max_rel_err=max_abs / scale if scale > 0 else max_abs,
        mean_abs_err=float(diff.mean()) if diff.size else 0.0,
        cosine=cosine(a_ok, b_ok),
        top1_agreement=None,
        within_tolerance=nonfinite == 0,
        reference_scale=scale,
        elements=int(a.size),
        nonfinite=nonfinite,
    )
    report.reference_near_zero = scale <= NEAR_ZERO
    agree = None if report.reference_near_zero else same_top1(ref, cmp)
    if agree is not None:
        report.top1_agreement = float(np.mean(agree))
        report.top1_differ = int(np.count_nonzero(~agree))
    if tol.elementwise and diff.size:
        allowed = (tol.atol or 0.0) + (tol.rtol or 0.0) * np.abs(a_ok)
        over = diff > allowed
        report.violations = int(np.count_nonzero(over))
        if report.violations:
            with np.errstate(divide="ignore", invalid="ignore"):
                excess = np.where(allowed > 0, diff / allowed, np.where(diff > 0, np.inf, 0.0))
            worst = int(np.argmax(excess))
            report.worst_error = float(diff[worst])
            report.worst_allowed = float(allowed[worst])
            report.worst_reference = float(a_ok[worst])
            report.within_tolerance = False
    return report


def _score_accuracy(
    report: ValidationReport,
    outputs_ref: dict[str, np.ndarray],
    outputs_cmp: dict[str, np.ndarray],
    labels: str | os.PathLike[str] | np.ndarray,
    samples: int,
) -> None:
    """Accuracy of both models on the first (N, classes) output."""
    truth = load_labels(labels)
    if len(truth) < samples:
        raise CalibrationError(f"labels hold {len(truth)} entries for {samples} validated samples")
    name = next((n for n, v in outputs_ref.items() if v.ndim == 2 and v.shape[1] > 1), None)
    if name is None:
        raise UsageError("--labels needs a model output of shape (N, classes) to score accuracy")
    truth = truth[:samples]
    report.accuracy_original = float(np.mean(outputs_ref[name].argmax(axis=1) == truth))
    report.accuracy_compact = float(np.mean(outputs_cmp[name].argmax(axis=1) == truth))


def load_labels(labels: str | os.PathLike[str] | np.ndarray) -> np.ndarray:
    """Class indices as a 1-D integer array; a missing, pickled or non-integer file is a CalibrationError."""
    if isinstance(labels, np.ndarray):
        array = labels
    else:
        path = Path(labels)
        if not path.exists():
            raise CalibrationError(f"{path}: no such labels file")
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise CalibrationError(f"{path}: not a readable .npy array ({exc})") from exc
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise CalibrationError(
            f"labels must be a 1-D integer array of class indices, got {array.dtype} {array.shape}"
        )
    return array


def _near_zero_warnings(report: ValidationReport, tol: Tolerances) -> list[str]:
    """One line per output whose original is near zero on this data but judged element-wise."""
    return [
        f"output '{out.name}': the original's values all lie within {NEAR_ZERO:g} of 0 on this data (max "
        f"|original| {out.reference_scale:.3g}; e.g. a detector that finds nothing in random pixels): judged "
        "element-wise only, cosine and top-1 not judged; validate with real inputs (--data) to judge accuracy"
        for out in report.outputs
        if out.reference_near_zero and tol.elementwise
    ]


def _failures(report: ValidationReport, tol: Tolerances) -> list[str]:
    """One line per violated criterion: which one, the measured figure, the limit and the margin."""
    failures = []
    for out in report.outputs:
        where = f"output '{out.name}'"
        if out.nonfinite:
            failures.append(
                f"{where}: {out.nonfinite} of {out.elements} values are NaN or Inf in the compact model "
                "but finite in the original"
            )
        if out.violations:
            bound = " + ".join(
                part
                for part in (
                    f"atol {tol.atol:g}" if tol.atol is not None else "",
                    f"rtol {tol.rtol:g} x |original|" if tol.rtol is not None else "",
                )
                if part
            )
            ratio = f", {out.worst_error / out.worst_allowed:.3g}x its bound" if out.worst_allowed > 0 else ""
            failures.append(
                f"{where}: {out.violations} of {out.elements} values differ by more than {bound}; worst "
                f"error {out.worst_error:.3g} where {out.worst_allowed:.3g} was allowed (original value "
                f"{out.worst_reference:.4g}){ratio}"
            )
        if out.reference_near_zero:
            if not tol.elementwise:
                failures.append(
                    f"{where}: cannot be judged on this data: the original's values all lie within "
                    f"{NEAR_ZERO:g} of 0 (max |original| {out.reference_scale:.3g}), so cosine and top-1 "
                    "say nothing, and no element-wise bound applies; validate with real inputs"
                )
            continue
        if tol.min_cosine is not None and not out.cosine >= tol.min_cosine:
            failures.append(
                f"{where}: cosine {out.cosine:.6f} is below min-cosine {tol.min_cosine} "
                f"by {tol.min_cosine - out.cosine:.3g}"
            )
        if tol.min_top1 is not None and out.top1_agreement is not None and out.top1_agreement < tol.min_top1:
            failures.append(
                f"{where}: top-1 agreement {out.top1_agreement:.4f} is below min-top1 {tol.min_top1} "
                f"({out.top1_differ} of {report.samples} predictions differ)"
            )
    if tol.max_accuracy_drop is not None and report.accuracy_original is not None:
        drop = report.accuracy_original - report.accuracy_compact
        if drop > tol.max_accuracy_drop:
            failures.append(
                f"accuracy dropped by {drop:.4f} ({report.accuracy_original:.4f} -> "
                f"{report.accuracy_compact:.4f}), more than max-acc-drop {tol.max_accuracy_drop}"
            )
    return failures
