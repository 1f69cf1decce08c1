"""Does the compact model still compute the same function? Run both on the same data and measure.

Pruning dead filters should change nothing beyond float rounding; pruning redundant ones, or INT8,
changes outputs a little and predictions hardly at all. The report therefore carries both kinds of
evidence, per output: element-wise error (max absolute and relative error, with polygraphy's
definitions, so the figures agree with `polygraphy run`), cosine similarity, top-1 agreement for
(N, classes) outputs, and accuracy against labels when given. `passed` is False as soon as one
tolerance is not met, and `failures` says which.

The original always runs on ONNX Runtime (the reference); the compact model runs on the chosen
backend (an .onnx on ONNX Runtime, or a built engine on TensorRT).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from deploysparse import progress
from deploysparse.backends import get_backend
from deploysparse.backends.base import Runner
from deploysparse.calibration import InputSpec, batches, load_calibration, sample_count
from deploysparse.errors import CalibrationError, UsageError

DEFAULT_BATCH = 32


@dataclass
class Tolerances:
    """Pass criteria; None switches a check off. An element passes when within atol OR rtol (polygraphy)."""

    atol: float | None = 1e-4
    rtol: float | None = 1e-3
    min_cosine: float | None = 0.999
    min_top1: float | None = None
    max_accuracy_drop: float | None = None


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


@dataclass
class ValidationReport:
    """Everything `deploysparse validate` prints; `passed` decides the exit code."""

    original: str
    compact: str
    backend: str
    samples: int
    outputs: list[OutputReport]
    tolerances: Tolerances
    accuracy_original: float | None = None
    accuracy_compact: float | None = None
    failures: list[str] = field(default_factory=list)

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
            "outputs": [asdict(o) for o in self.outputs],
            "failures": self.failures,
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
    backend: str = "onnxruntime",
    atol: float | None = 1e-4,
    rtol: float | None = 1e-3,
    min_cosine: float | None = 0.999,
    min_top1: float | None = None,
    max_accuracy_drop: float | None = None,
    batch_size: int = DEFAULT_BATCH,
    threads: int | None = None,
) -> ValidationReport:
    """Run `original` and `compact` on `data` in batches and compare every output."""
    tolerances = Tolerances(atol, rtol, min_cosine, min_top1, max_accuracy_drop)
    reference = get_backend("onnxruntime")
    with (
        reference.runner(original, threads=threads) as ref,
        get_backend(backend).runner(compact, threads) as cmp,
    ):
        feeds = load_calibration(data, ref.input_specs)
        _check_same_inputs(ref.input_specs, cmp.input_specs, str(compact))
        if len(ref.output_names) != len(cmp.output_names):
            raise UsageError(
                f"{compact} has {len(cmp.output_names)} outputs but {original} has {len(ref.output_names)}"
            )
        batch, static = _batch_size(ref.input_specs + cmp.input_specs, batch_size, sample_count(feeds))
        outputs_ref, outputs_cmp = _run_both(ref, cmp, feeds, batch, static)
    samples = len(next(iter(outputs_ref.values())))
    report = ValidationReport(
        original=str(original),
        compact=str(compact),
        backend=backend,
        samples=samples,
        outputs=[],
        tolerances=tolerances,
    )
    for name in outputs_ref:
        report.outputs.append(_compare(name, outputs_ref[name], outputs_cmp[name], tolerances))
    if labels is not None:
        _score_accuracy(report, outputs_ref, outputs_cmp, labels, samples)
    report.failures = _failures(report, tolerances)
    return report


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
    within, max_abs, max_rel, mean_abs = _polygraphy_errors(name, ref, cmp, tol)
    a, b = ref.astype(np.float64).ravel(), cmp.astype(np.float64).ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(a @ b / norms) if norms > 0 else 1.0 if not a.any() and not b.any() else 0.0
    top1 = None
    if ref.ndim == 2 and ref.shape[1] > 1:
        top1 = float(np.mean(ref.argmax(axis=1) == cmp.argmax(axis=1)))
    return OutputReport(name, list(ref.shape), max_abs, max_rel, mean_abs, cosine, top1, within)


def _polygraphy_errors(
    name: str, ref: np.ndarray, cmp: np.ndarray, tol: Tolerances
) -> tuple[bool, float, float, float]:
    """polygraphy's SimpleCompareFunc: abs = |orig - compact|, rel = abs / |compact| (0 -> eps)."""
    from polygraphy import comparator
    from polygraphy.comparator import CompareFunc
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.logger import G_LOGGER

    simple = getattr(comparator, "SimpleCompareFunc", None) or CompareFunc.simple
    compare = simple(
        atol=math.inf if tol.atol is None else tol.atol,
        rtol=math.inf if tol.rtol is None else tol.rtol,
        check_error_stat="elemwise",
    )
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        result = compare(
            IterationResult({name: ref}, runner_name="original"),
            IterationResult({name: cmp}, runner_name="compact"),
        )[name]
    return bool(result), float(result.max_absdiff), float(result.max_reldiff), float(result.mean_absdiff)


def _score_accuracy(
    report: ValidationReport,
    outputs_ref: dict[str, np.ndarray],
    outputs_cmp: dict[str, np.ndarray],
    labels: str | os.PathLike[str] | np.ndarray,
    samples: int,
) -> None:
    """Accuracy of both models on the first (N, classes) output."""
    truth = _load_labels(labels)
    if len(truth) < samples:
        raise CalibrationError(f"labels hold {len(truth)} entries for {samples} validated samples")
    name = next((n for n, v in outputs_ref.items() if v.ndim == 2 and v.shape[1] > 1), None)
    if name is None:
        raise UsageError("--labels needs a model output of shape (N, classes) to score accuracy")
    truth = truth[:samples]
    report.accuracy_original = float(np.mean(outputs_ref[name].argmax(axis=1) == truth))
    report.accuracy_compact = float(np.mean(outputs_cmp[name].argmax(axis=1) == truth))


def _load_labels(labels: str | os.PathLike[str] | np.ndarray) -> np.ndarray:
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


def _failures(report: ValidationReport, tol: Tolerances) -> list[str]:
    failures = []
    for out in report.outputs:
        if not out.within_tolerance:
            failures.append(
                f"output '{out.name}': max abs error {out.max_abs_err:.3g} / max rel error {out.max_rel_err:.3g} "
                f"exceed atol {tol.atol} and rtol {tol.rtol}"
            )
        if tol.min_cosine is not None and not out.cosine >= tol.min_cosine:
            failures.append(f"output '{out.name}': cosine {out.cosine:.6f} < {tol.min_cosine}")
        if tol.min_top1 is not None and out.top1_agreement is not None and out.top1_agreement < tol.min_top1:
            failures.append(f"output '{out.name}': top-1 agreement {out.top1_agreement:.4f} < {tol.min_top1}")
    if tol.max_accuracy_drop is not None and report.accuracy_original is not None:
        drop = report.accuracy_original - report.accuracy_compact
        if drop > tol.max_accuracy_drop:
            failures.append(f"accuracy dropped by {drop:.4f} (> {tol.max_accuracy_drop})")
    return failures
