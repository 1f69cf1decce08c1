"""How fast the original, its denormal-flushed copy and the compact model run, measured side by side.

A recipe built at fp16 or int8 also times the compact model in fp32: original fp32 -> compact fp32 is
what pruning did, compact fp32 -> compact int8 what the precision did.

Latency is `bench.repeats` rounds of `bench.iters` calls of every model in turn (so all see the same
machine load: a shared CI runner drifts by more than pruning gains), every call's time kept for the
CI gate's intervals, and the per-layer profile runs the fp32 models interleaved once. Both time the
flushed original too: prune flushes the compact model, so a report that timed only the original as
it is would credit pruning with what flushing did. A compact model on the reference backend (ONNX
Runtime) is timed beside the yardstick too (backends/yardstick.py), a fixed net that lets `check` compare a
changed model without the runner's speed in the figure. All of it fits in `bench.max_seconds`
(pipeline/time_box.py); batch sizes the model cannot take, or that do not fit, are named in
`latency.skipped_batches`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from deploysparse.backends import REFERENCE_BACKEND, get_backend
from deploysparse.backends.yardstick import YARDSTICK_VERSION, write_yardstick
from deploysparse.bench import benchmark_side_by_side
from deploysparse.pipeline.original import OriginalFacts
from deploysparse.pipeline.time_box import MIN_ITERS, TimePlan, plan_measurement
from deploysparse.profiling import side_by_side_rows
from deploysparse.progress import progress
from deploysparse.recipe import Recipe
from deploysparse.run_shapes import RunShapes


@dataclass(frozen=True)
class Speed:
    """What one run measured of speed: report.json's `latency` and `layers` sections."""

    # model ("original", "original_flushed", "compact_fp32", "compact", "yardstick") -> one entry per batch size,
    # the machine's "fingerprint", the "timing" conditions and "skipped_batches" (report.schema.Latency)
    latency: dict
    layers: dict | None  # the per-layer profile; None when the recipe asks for none or cannot have one
    # Where it was measured, in words, when that is not the machine the build describes (a sweep's
    # benchmarking node); None: report.json describes the machine from the build.
    device: str | None = None


def measure_speed(
    recipe: Recipe,
    original: str,
    artifact: str | Path,
    compact_onnx: Path | None = None,
    original_facts: OriginalFacts | None = None,
) -> Speed:
    """Latency of the original (and its denormal-flushed copy) and the compact artifact, interleaved;
    with `compact_onnx`, the per-layer profile too when the recipe asks for it (`profiles_layers`).

    Without `original_facts` the original is read here and its flushed copy made (a benchmarking node
    that received only the file); with them, their flushed copy is timed."""
    with tempfile.TemporaryDirectory(prefix="deploysparse-flushed-") as work:
        if original_facts is None:
            original_facts = OriginalFacts.read(original, Path(work), recipe.input_shapes())
        elif original_facts.flushed is None and original_facts.denormals.total:
            raise ValueError("measure_speed needs OriginalFacts made with a folder for the flushed original")
        flushed_original = original_facts.flushed
        shapes = original_facts.shapes
        batches, skipped = shapes.usable_batches(recipe.bench.batches)
        profile = compact_onnx is not None and profiles_layers(recipe)
        times_fp32 = compact_onnx is not None and recipe.build.precision != "fp32"
        yardstick = write_yardstick(Path(work)) if times_yardstick(recipe) else None
        models = 2 + (flushed_original is not None) + times_fp32 + (yardstick is not None)
        plan = plan_measurement(recipe.bench, original, shapes, batches, models, profile)
        latency = _latency(
            recipe, original, Path(artifact), flushed_original, shapes, plan, compact_onnx, yardstick
        )
        latency["skipped_batches"] = [s.to_json() for s in [*skipped, *plan.skipped]]
        layers = None
        if profile:
            layers = _layers(recipe, original, compact_onnx, flushed_original, shapes, plan)
    return Speed(latency=latency, layers=layers)


def unmeasured() -> Speed:
    """The Speed of a run whose compact artifact could not be built here: nothing was timed (timing
    the original alone would compare with nothing)."""
    return Speed(latency={"original": [], "original_flushed": [], "compact": []}, layers=None)


def times_yardstick(recipe: Recipe) -> bool:
    """Whether a run of `recipe` times the yardstick: when the compact model runs on the reference
    backend, where the yardstick runs too (on a GPU engine, a CPU yardstick would measure another
    machine than the compact model's)."""
    return recipe.build.backend == REFERENCE_BACKEND


def profiles_layers(recipe: Recipe) -> bool:
    """Whether a run of `recipe` profiles each layer: when `bench.per_layer` asks for it, and only on
    a backend with a per-layer profiler (not TensorRT: CPU figures would say nothing about its engine)."""
    return recipe.bench.per_layer and get_backend(recipe.build.backend).has_profiler


def _layers(
    recipe: Recipe, original: str, compact: Path, flushed: Path | None, shapes: RunShapes, plan: TimePlan
) -> dict:
    """Per-layer latency of the fp32 original, its flushed copy and the compact ONNX, side by side,
    at the largest batch measured, on the recipe's backend, as many calls as the plan allows."""
    backend = get_backend(recipe.build.backend)
    models = {"original": original, **({"original_flushed": flushed} if flushed else {}), "compact": compact}
    batch = max(plan.batches)
    with progress("per-layer profile"):
        profiles = backend.profile(
            models, batch=batch, warmup=plan.profile_warmup, runs=plan.profile_runs, shapes=shapes.shapes
        )
    return {
        "batch": batch,
        "runs": plan.profile_runs,
        "models": list(models),
        "rows": side_by_side_rows(profiles),
    }


def _latency(
    recipe: Recipe,
    original: str,
    compact: Path,
    flushed: Path | None,
    shapes: RunShapes,
    plan: TimePlan,
    compact_onnx: Path | None = None,
    yardstick: Path | None = None,
) -> dict:
    """report.json's `latency`: each model's points at each of the plan's batches (every round's calls
    kept), original (and its flushed copy) and compact timed side by side in `bench.repeats` rounds so
    all see the same machine load, with the machine's fingerprint and the conditions of the
    measurement. A recipe built at another precision than fp32 also times the compact ONNX in fp32
    (`compact_fp32`), so the report splits the speed-up into what pruning did and what the precision
    did. With `yardstick`, that net is timed in the same rounds, on its own inputs."""
    bench = recipe.bench
    models = {"original": (original, REFERENCE_BACKEND)}
    if flushed is not None:
        models["original_flushed"] = (flushed, REFERENCE_BACKEND)
    if compact_onnx is not None and recipe.build.precision != "fp32":
        models["compact_fp32"] = (compact_onnx, REFERENCE_BACKEND)
    models["compact"] = (compact, recipe.build.backend)
    if yardstick is not None:
        models["yardstick"] = (yardstick, REFERENCE_BACKEND)
    measured = benchmark_side_by_side(
        models,
        batches=plan.batches,
        warmup=bench.warmup,
        iters=bench.iters,
        rounds=bench.repeats,
        shapes=shapes,
        box_s=plan.box_s,
        min_iters=MIN_ITERS,
        threads=bench.threads,
        own_inputs={"yardstick"},
    )
    return {
        **{name: [point.to_json() for point in points] for name, points in measured.models.items()},
        "fingerprint": measured.fingerprint,
        "timing": measured.conditions,
        "yardstick_version": YARDSTICK_VERSION if yardstick is not None else None,
    }
