"""The one step sequence of a run, shared by `deploysparse run` and every sweep point.

load the original -> prune (dead filters, then the recipe's criterion and budget) -> [fine-tune] ->
save compact.onnx and plan.json -> build for the recipe's backend -> validate against the original
-> measure speed (latency and the per-layer profile) -> assemble report.json.

`run_steps` is the sequence; `StepHooks` holds what may differ between its callers, and nothing
else does: a sweep point may fine-tune the compact module between prune and save, and may measure
speed elsewhere (on a Ray node with the benchmark label). Everything a step needs of the original
after prune is read from the one ModelProto loaded (`OriginalFacts`), including the denormal-flushed
copy the measurement times beside it, so a point and a run produce the same report.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx

from deploysparse import api
from deploysparse.atomic import write_text
from deploysparse.backends import get_backend
from deploysparse.backends.base import BuildResult
from deploysparse.backends.quantize import Int8Options
from deploysparse.budget import DEAD
from deploysparse.calibration import load_calibration
from deploysparse.errors import UsageError
from deploysparse.modelio import load_model, save_model
from deploysparse.pipeline.original import OriginalFacts
from deploysparse.pipeline.report import assemble_report
from deploysparse.pipeline.speed import Speed, measure_speed, unmeasured
from deploysparse.progress import progress
from deploysparse.recipe import RECIPE_SHAPE, Recipe
from deploysparse.run_shapes import RunShapes, resolve_shapes, shapes_if_known
from deploysparse.validate import ValidationReport, validate

# (prune result, staging folder) -> the compact model to save instead of result.model (a fine-tuned
# re-export); it may write scratch files into the staging folder but must remove them.
Finetune = Callable[[api.PruneResult, Path], onnx.ModelProto]
# (recipe, original ONNX, compact artifact, compact ONNX, facts of the original) -> Speed
Measure = Callable[[Recipe, str, Path, Path, OriginalFacts], Speed]


@dataclass(frozen=True)
class StepHooks:
    """What may differ between the callers of `run_steps`; the defaults are `deploysparse run`'s."""

    finetune: Finetune | None = None  # None: the pruned model is saved as it is
    measure: Measure = measure_speed  # in this process, timing the flushed original made here


@dataclass(frozen=True)
class RunSpec:
    """What one run works on: a recipe, the original as an ONNX file, and the data."""

    recipe: Recipe
    source: str  # the original ONNX file (an entry point is exported before the steps)
    model_label: str  # report.json's model.path: the model as the user named it
    calib: str | None  # calibration data: data-driven criteria and INT8
    data: str  # validation inputs
    labels: str | np.ndarray | None  # validation labels (a .npy path or the array), for accuracy
    input_shapes: Mapping[str, Sequence[int]] | None = None  # `run --input-shape`: wins over the recipe's


@dataclass(frozen=True)
class RunOutcome:
    """What `run_steps` produced: the report.json dict and the build (its artifact, its files)."""

    report: dict
    built: BuildResult


def run_steps(spec: RunSpec, staging: Path, started: datetime, hooks: StepHooks = StepHooks()) -> RunOutcome:
    """Run every step of `spec.recipe` on `spec.source`, writing compact.onnx, plan.json and build/
    into `staging`; return the report (its artifact hashes: every file then in `staging`).

    The caller writes report.json (deploysparse.report.write_report) once it has added its own
    sections, and publishes the folder."""
    recipe = spec.recipe
    with tempfile.TemporaryDirectory(prefix="deploysparse-flushed-") as work:
        with progress("prune"):
            # The one load of the original: prune analyses a copy of it (its normalised graph is
            # no longer the original), and what the later steps need of it is read right after.
            original = load_model(spec.source)
            shapes = run_shapes(spec, original)
            result = prune_with_recipe(
                recipe, spec.source, spec.calib, original_model=original, input_shapes=shapes.shapes
            )
        facts = OriginalFacts.of(original, Path(work), shapes)
        del original  # not held through fine-tuning, build, validation and benchmark: its size again
        compact_model = hooks.finetune(result, staging) if hooks.finetune is not None else None
        compact_path = save_compact(result, staging, compact_model)
        built, validation = build_and_validate(
            recipe, spec.source, compact_path, staging, spec.calib, spec.data, spec.labels, facts
        )
        quantization = quantization_summary(built, compact_path, spec.data, spec.labels)
        # An artifact the recipe's backend could not build here (a TensorRT engine on a machine
        # without TensorRT) has no latency to measure: the report says so instead. The measurement
        # gets the shapes in the recipe it receives: a Ray node gets nothing else.
        speed = (
            unmeasured()
            if built.not_built
            else hooks.measure(
                recipe.at_shapes(shapes.shapes), spec.source, built.artifact, compact_path, facts
            )
        )
    report = assemble_report(
        recipe,
        spec.model_label,
        spec.source,
        result,
        built,
        validation,
        speed,
        started,
        staging,
        facts,
        quantization,
    )
    return RunOutcome(report=report, built=built)


def run_shapes(spec: RunSpec, original: onnx.ModelProto) -> RunShapes:
    """The shapes this run feeds the model at (deploysparse.run_shapes): `run --input-shape`, else the
    recipe's `input_shape`, else the model's own dims, else (dynamic dims past the batch) the data's:
    the calibration data, else the validation data."""
    if spec.input_shapes:
        return resolve_shapes(original, spec.input_shapes)
    if spec.recipe.input_shape is not None:
        return resolve_shapes(original, spec.recipe.input_shapes(), given_as=RECIPE_SHAPE)
    known = shapes_if_known(original)
    if known is not None:
        return known
    return resolve_shapes(original, data=load_calibration(spec.calib or spec.data, original))


def prune_with_recipe(
    recipe: Recipe,
    source: str,
    calib: str | None,
    *,
    original_model: onnx.ModelProto | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> api.PruneResult:
    """The recipe's `prune` section applied to `source` at `input_shapes` (the run's shapes): dead
    filters, then one ranking criterion.

    With `original_model` (`source` loaded) prune analyses a copy of it and leaves it unchanged."""
    p = recipe.prune
    ranking = p.ranking
    if len(ranking) > 1:
        raise UsageError(f"a recipe runs one ranking criterion after 'dead', got {ranking}")
    from deploysparse.criteria import budget_for

    budget = budget_for(ranking[0] if ranking else DEAD, recipe.budget())
    return api.prune(
        source if original_model is None else original_model,
        criterion=ranking[0] if ranking else DEAD,
        calib=calib,
        dead_threshold=p.dead_threshold,
        budget=budget,
        name=source,
        input_shapes=input_shapes,
    )


def save_compact(result: api.PruneResult, staging: Path, model: onnx.ModelProto | None = None) -> Path:
    """Write compact.onnx (the pruned model, or `model` when given: e.g. a fine-tuned re-export) and plan.json."""
    compact_path = staging / "compact.onnx"
    save_model(result.model if model is None else model, compact_path)
    result.plan.save(staging / "plan.json", result.graph)
    return compact_path


def build_and_validate(
    recipe: Recipe,
    source: str,
    compact_path: Path,
    staging: Path,
    calib: str | None,
    data: str,
    labels: str | np.ndarray | None,
    original_facts: OriginalFacts,
) -> tuple[BuildResult, ValidationReport]:
    """Build the compact model for the recipe's backend and compare it with the original on `data`."""
    backend = get_backend(recipe.build.backend)
    with progress(f"build ({recipe.build.backend}, {recipe.build.precision})"):
        built = backend.build(
            compact_path,
            staging / "build",
            precision=recipe.build.precision,
            calib=calib,
            shapes=_profile(recipe, original_facts),
            workspace_mb=recipe.build.workspace_mb,
            input_shapes=original_facts.shapes.shapes,
            # the validation inputs judge the int8 choices (agreement with fp32, no labels needed)
            int8=Int8Options(recipe.build.int8_layers, recipe.build.calibration_method, judge=data),
            sparsity=recipe.build.sparsity,
        )
    _relative_metadata(built.files, staging)
    v = recipe.validate_
    with progress("validate"):
        validation = validate(
            source,
            built.artifact,
            data,
            labels=labels,
            backend=built.runs_on,  # the backend, or ONNX Runtime for an artefact built elsewhere
            atol=v.atol,
            rtol=v.rtol,
            min_cosine=v.min_cosine,
            min_top1=v.min_top1_agreement,
            max_accuracy_drop=v.max_accuracy_drop,
            precision=recipe.build.precision,
        )
    validation.compact = built.artifact.relative_to(staging).as_posix()
    return built, validation


def quantization_summary(
    built: BuildResult, compact_path: Path, data: str, labels: str | np.ndarray | None
) -> dict | None:
    """report.json's `quantization`: how the build quantised and whether int8 paid where it was built
    (the build metadata), and the int8 model against the compact model in fp32 on the validation
    data, so the report separates what quantising changed from what pruning changed. None unless the
    build measured its int8 choice (ONNX Runtime's int8 build)."""
    meta = built.metadata.get("quantization")
    if not isinstance(meta, dict):
        return None
    with progress("validate int8 against fp32"):
        versus = validate(compact_path, built.artifact, data, labels=labels, precision="int8")
    layers, latency, calibration = meta["layers"], meta["latency"], meta["calibration"]
    return {
        "scheme": meta["description"],
        "reason": meta["reason"],
        "calibration_method": calibration["method"],
        "calibration_chosen_by": calibration["chosen_by"],
        "float_layers": layers["float"],
        "layers_note": layers["note"],
        "build_batch": latency["batch"],
        "build_fp32_ms": latency["fp32_ms"],
        "build_int8_ms": latency["int8_ms"],
        "faster": meta["faster"],
        "finding": meta["finding"],
        "top1_agreement": versus.top1_agreement,
        "cosine": versus.cosine,
        "accuracy_fp32": versus.accuracy_original,
        "accuracy_int8": versus.accuracy_compact,
        "build": meta,
    }


def _relative_metadata(files: list[Path], staging: Path) -> None:
    """Build metadata names the model it was built from; inside the staging folder that path is
    rewritten relative to the metadata file, so it stays right once the folder is published."""
    for path in files:
        if path.suffix != ".json" or not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        changed = False
        for key, value in data.items():
            if isinstance(value, str) and value.startswith(str(staging)):
                data[key] = os.path.relpath(value, path.parent)
                changed = True
        if changed:
            write_text(path, json.dumps(data, indent=2) + "\n")


def _profile(recipe: Recipe, original: OriginalFacts) -> dict[str, tuple] | None:
    """Optimisation profiles (only TensorRT needs them): the recipe's per-input shapes, else the run's
    shapes over the recipe's `batch` [min, opt, max] on dim 0, or over the model's static batch."""
    b = recipe.build
    if b.shapes:
        return {name: tuple(tuple(s) for s in profile) for name, profile in b.shapes.items()}
    if not get_backend(b.backend).needs_shape_profile:
        return None
    shapes = original.shapes
    batches = b.batch if shapes.static_batch is None else [shapes.static_batch[1]] * 3
    return {name: tuple((n, *dims[1:]) for n in batches) for name, dims in shapes.shapes.items()}
