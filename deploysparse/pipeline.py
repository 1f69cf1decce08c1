"""`deploysparse run`: the whole pipeline a recipe describes, into one output folder.

prune -> build -> validate -> bench (original and compact, repeated) -> report.json + report.html.
Everything is written into a staging folder beside OUTDIR, the report last (its artifact hashes
read from the staged files, which are the published files), and the staging folder then becomes
OUTDIR in one step (`atomic.replace_folder`): a run that fails or is killed at any point leaves the
previous OUTDIR as it was, and a report.json in OUTDIR always describes the files beside it. Paths
inside the folder are written relative to it, so a copied or moved output folder still loads.

OUTDIR is replaced as a whole, so it may not hold an input, and an existing OUTDIR must be empty or
a previous run's output (it has a report.json): a folder of other files is never swept away.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx

from deploysparse import api
from deploysparse.atomic import replace_folder, write_text
from deploysparse.backends import REFERENCE_BACKEND, get_backend
from deploysparse.backends.timing import interleaved
from deploysparse.bench import benchmark
from deploysparse.budget import DEAD, Budget
from deploysparse.denormals import DenormalCount, count_denormals, flushed_copy
from deploysparse.errors import UsageError
from deploysparse.hashing import sha256_file
from deploysparse.modelio import external_data_files, load_model, save_model
from deploysparse.output_guard import reads, refuse_overlap, writes
from deploysparse.profiling import side_by_side_rows
from deploysparse.progress import progress
from deploysparse.recipe import Recipe
from deploysparse.report import ReportError, write_report
from deploysparse.validate import validate


@dataclass
class RunInputs:
    """What the user points the recipe at."""

    model: str
    calib: str | None = None
    data: str | None = None
    labels: str | None = None
    weights: str | None = None
    input_shape: list[int] | None = None


def run_recipe(
    recipe: Recipe,
    inputs: RunInputs,
    outdir: str | os.PathLike[str],
    extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
) -> dict:
    """Run every step of `recipe` on `inputs.model`; return the report written to OUTDIR.

    extra_files: name in OUTDIR -> file to copy there (published with the rest, e.g. demo data)."""
    outdir = Path(outdir)
    _refuse_unsafe_outdir(recipe, inputs, outdir)
    outdir.parent.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.staging-", dir=outdir.parent))
    try:
        for name, source in (extra_files or {}).items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / name)
        report = _run(recipe, inputs, staging, started)  # its artifact hashes: every staged file
        try:
            write_report(report, staging)
        except ReportError as exc:  # our own report breaking our own schema is a bug, not bad input
            raise RuntimeError(f"the run's report does not fit the report schema ({exc})") from exc
        replace_folder(staging, outdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _refuse_unsafe_outdir(recipe: Recipe, inputs: RunInputs, outdir: Path) -> None:
    model = inputs.model if Path(inputs.model).exists() else None
    refuse_overlap(
        writes("-o", outdir, "folder"),
        [
            *reads("--model", model, "model"),
            *reads("--calib", inputs.calib),
            *reads("--data", inputs.data),
            *reads("--labels", inputs.labels),
            *reads("--weights", inputs.weights),
            *reads("the recipe", recipe.source),
            *reads("the recipe's calibration", recipe.calibration_path()),
        ],
    )
    if inputs.labels is not None:
        from deploysparse.validate import load_labels

        load_labels(inputs.labels)
    if outdir.is_dir() and any(outdir.iterdir()) and not (outdir / "report.json").is_file():
        raise UsageError(
            f"-o {outdir}: the folder holds files but no report.json, so it is not the output of an "
            "earlier run; the output folder is replaced as a whole: give a new or empty folder"
        )


def _run(recipe: Recipe, inputs: RunInputs, staging: Path, started: datetime) -> dict:
    source = _resolve_source(inputs, staging)
    calib = inputs.calib or (str(recipe.calibration_path()) if recipe.calibration_path() else None)
    if calib is None and recipe.build.precision == "int8":
        raise UsageError("INT8 needs calibration data: give --calib or `build.calibration` in the recipe")
    data = inputs.data or calib
    if data is None:
        raise UsageError("validation needs data: give --data (or --calib) with inputs the model accepts")

    with tempfile.TemporaryDirectory(prefix="deploysparse-flushed-") as work:
        with progress("prune"):
            # The one load of the original: prune analyses a copy of it (its normalised graph is
            # no longer the original), and what the later steps need of it is read right after.
            original = load_model(source)
            result = prune_with_recipe(recipe, source, calib, original_model=original)
        facts = OriginalFacts.of(original, Path(work))
        del original  # not held through build, validation and benchmark: its size again in memory
        compact_path = save_compact(result, staging)
        built, validation = build_and_validate(
            recipe, source, compact_path, staging, calib, data, inputs.labels, original_facts=facts
        )
        latency, layers = measure_speed(recipe, source, built.artifact, compact_path, original_facts=facts)
    return assemble_report(
        recipe,
        inputs.model,
        source,
        result,
        built,
        validation,
        latency,
        started,
        staging,
        layers,
        original_facts=facts,
    )


@dataclass(frozen=True)
class OriginalFacts:
    """What the steps after prune need of the original model, read from the ModelProto in one pass.

    A step given these neither loads the original again (0.4 s for a 100 MB model, seconds at 2 GB)
    nor needs the caller to hold the ModelProto through build and benchmark (its size in memory).
    A step not given them reads them from the file itself."""

    inputs: dict[str, list[int]]  # each graph input's declared dims (0: dynamic), for TensorRT profiles
    denormals: DenormalCount  # denormal float32 weights, for the report
    flushed: Path | None  # the original with those set to zero, on disk; None when it has none

    @classmethod
    def of(cls, model: onnx.ModelProto, folder: Path | None = None) -> OriginalFacts:
        """The facts of `model`; the flushed copy is written into `folder` (None: not written)."""
        inputs = {
            inp.name: [d.dim_value for d in inp.type.tensor_type.shape.dim] for inp in model.graph.input
        }
        denormals = count_denormals(model)
        flushed = None
        if folder is not None and denormals.total:  # no copy of a model that has none
            flushed = _flushed_original(model, folder)
        return cls(inputs=inputs, denormals=denormals, flushed=flushed)

    @classmethod
    def read(cls, path: str, folder: Path | None = None) -> OriginalFacts:
        """The facts of the model file at `path` (loaded here, released on return)."""
        return cls.of(load_model(path), folder)


# The steps of one run, public so that a sweep (deploysparse.sweep) runs each point with the same code.
# Each takes the original as a path and, optionally, what it needs of it already read (prune: the
# ModelProto load_model returned, external data included; the later steps: its OriginalFacts): a
# step loads the file only when that is not given.


def save_compact(result: api.PruneResult, staging: Path, model=None) -> Path:
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
    *,
    original_facts: OriginalFacts | None = None,
):
    """Build the compact model for the recipe's backend and compare it with the original on `data`."""
    backend = get_backend(recipe.build.backend)
    with progress(f"build ({recipe.build.backend}, {recipe.build.precision})"):
        built = backend.build(
            compact_path,
            staging / "build",
            precision=recipe.build.precision,
            calib=calib,
            shapes=_shapes(recipe, source, original_facts),
            workspace_mb=recipe.build.workspace_mb,
        )
    _relative_metadata(built.files, staging)
    v = recipe.validate_
    with progress("validate"):
        validation = validate(
            source,
            built.artifact,
            data,
            labels=labels,
            backend=recipe.build.backend,
            atol=v.atol,
            rtol=v.rtol,
            min_cosine=v.min_cosine,
            min_top1=v.min_top1_agreement,
            max_accuracy_drop=v.max_accuracy_drop,
            precision=recipe.build.precision,
        )
    validation.compact = built.artifact.relative_to(staging).as_posix()
    return built, validation


def measure_speed(
    recipe: Recipe,
    original: str,
    artifact: str | Path,
    compact_onnx: Path | None = None,
    *,
    original_facts: OriginalFacts | None = None,
) -> tuple[dict, dict | None]:
    """Latency of the original (and its denormal-flushed copy) and the compact artifact, interleaved;
    with `compact_onnx`, the per-layer profile too (ONNX Runtime recipes; None otherwise)."""
    with tempfile.TemporaryDirectory(prefix="deploysparse-flushed-") as work:
        if original_facts is None:
            original_facts = OriginalFacts.read(original, Path(work))
        elif original_facts.flushed is None and original_facts.denormals.total:
            raise ValueError("measure_speed needs OriginalFacts made with a folder for the flushed original")
        flushed_original = original_facts.flushed
        latency = _latency(recipe, original, Path(artifact), flushed_original)
        layers = None
        if compact_onnx is not None:
            layers = _layers(recipe, original, compact_onnx, flushed_original)
    return latency, layers


def assemble_report(
    recipe: Recipe,
    model_label: str,
    source: str,
    result: api.PruneResult,
    built,
    validation,
    latency: dict,
    started: datetime,
    staging: Path,
    layers: dict | None = None,
    *,
    original_facts: OriginalFacts | None = None,
) -> dict:
    """The report.json dict of one run, with the sha256 of every file in `staging`."""
    if original_facts is None:
        original_facts = OriginalFacts.read(source)
    finished = datetime.now(timezone.utc)
    validation.original = model_label
    report = _report(recipe, model_label, source, result, built, validation, latency, started, finished)
    report["layers"] = layers
    report["extra"]["denormals"] = {
        "original": original_facts.denormals.to_json(),
        "flushed_by_prune": result.summary.get("denormals_flushed"),
    }
    report["artifacts"] = {
        p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()
    }
    report["artifact_data"] = {  # model -> the external data files it reads
        p.relative_to(staging).as_posix(): [d.relative_to(staging).as_posix() for d in data]
        for p in sorted(staging.rglob("*.onnx"))
        if (data := external_data_files(p))
    }
    return report


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


def _resolve_source(inputs: RunInputs, staging: Path) -> str:
    if inputs.model.lower().endswith(".onnx") and inputs.weights is None:
        return inputs.model
    from deploysparse.frontend.model_source import resolve_model

    resolved = resolve_model(
        inputs.model, weights=inputs.weights, input_shape=inputs.input_shape, workdir=staging / "source"
    )
    return str(resolved.onnx_path)


def prune_with_recipe(
    recipe: Recipe, source: str, calib: str | None, *, original_model: onnx.ModelProto | None = None
) -> api.PruneResult:
    """The recipe's `prune` section applied to `source`: dead filters, then one ranking criterion.

    With `original_model` (`source` loaded) prune analyses a copy of it and leaves it unchanged."""
    p = recipe.prune
    ranking = [c for c in p.criterion if c != DEAD]
    if len(ranking) > 1:
        raise UsageError(f"a recipe runs one ranking criterion after 'dead', got {ranking}")
    budget = dataclasses.replace(p.budget(), backend=recipe.build.backend, batch=recipe.build.batch[1])
    if not ranking:
        budget = Budget(round_to=budget.round_to)
    return api.prune(
        source if original_model is None else original_model,
        criterion=ranking[0] if ranking else DEAD,
        calib=calib,
        dead_threshold=p.dead_threshold,
        budget=budget,
        name=source,
    )


def _shapes(recipe: Recipe, source: str, original: OriginalFacts | None) -> dict[str, tuple] | None:
    """Optimisation profiles: the recipe's per-input shapes, else `batch` [min, opt, max] on dim 0
    of each input of the original (read from `source` when not given: only TensorRT needs them)."""
    b = recipe.build
    if b.shapes:
        return {name: tuple(tuple(s) for s in profile) for name, profile in b.shapes.items()}
    if not get_backend(b.backend).needs_shape_profile:
        return None
    inputs = (original if original is not None else OriginalFacts.read(source)).inputs
    return {name: tuple(tuple([n, *dims[1:]]) for n in b.batch) for name, dims in inputs.items()}


def _flushed_original(original: onnx.ModelProto, folder: Path) -> Path:
    """A copy of the original with its denormal weights set to zero, written into `folder`.

    prune flushes the compact model, so timing the original as it is would credit pruning with
    what flushing did: the report gives the speed-up against this copy too.
    """
    flushed, _ = flushed_copy(original)
    return save_model(flushed, folder / "original.flushed.onnx")


def _layers(recipe: Recipe, original: str, compact: Path, flushed: Path | None) -> dict | None:
    """Per-layer latency of the fp32 original, its flushed copy and the compact ONNX, side by side,
    at the recipe's largest batch, on the recipe's backend; None for a backend without a per-layer
    profiler (TensorRT: CPU figures would say nothing about its engine)."""
    backend = get_backend(recipe.build.backend)
    if not backend.has_profiler:
        return None
    bench = recipe.bench
    models = {"original": original, **({"original_flushed": flushed} if flushed else {}), "compact": compact}
    batch = max(bench.batches)
    with progress("per-layer profile"):
        profiles = backend.profile(models, batch=batch, warmup=bench.warmup, runs=bench.iters)
    return {"batch": batch, "runs": bench.iters, "models": list(models), "rows": side_by_side_rows(profiles)}


def _latency(recipe: Recipe, original: str, compact: Path, flushed: Path | None = None) -> dict:
    """p50/p99 of each repeated run, original (and its flushed copy) and compact interleaved so all
    see the same machine load (a shared CI runner drifts by more than pruning gains); the reported
    point is the run with the median p50."""
    bench = recipe.bench
    models = {"original": (original, REFERENCE_BACKEND)}
    if flushed is not None:
        models["original_flushed"] = (flushed, REFERENCE_BACKEND)
    models["compact"] = (compact, recipe.build.backend)
    with progress("benchmark", total=len(models) * bench.repeats) as advance:
        tasks = [
            functools.partial(_bench_once, path, backend, bench, advance) for path, backend in models.values()
        ]
        runs = dict(zip(models, interleaved(tasks, bench.repeats), strict=True))
    out: dict[str, list] = {key: [] for key in models}
    for key, repeats in runs.items():
        for i, batch in enumerate(bench.batches):
            timings = [run[i] for run in repeats]
            middle = sorted(timings, key=lambda t: t.p50_ms)[len(timings) // 2]
            out[key].append(
                {
                    "batch": batch,
                    "p50_ms": middle.p50_ms,
                    "p90_ms": middle.p90_ms,
                    "p99_ms": middle.p99_ms,
                    "mean_ms": middle.mean_ms,
                    "throughput_per_s": middle.throughput_per_s,
                    "runs": [{"p50_ms": t.p50_ms, "p99_ms": t.p99_ms} for t in timings],
                }
            )
    return out


def _bench_once(path: str | Path, backend: str, bench, advance, repeat: int) -> list:
    """One repeat of `bench` on one model (the repeat's number seeds its random inputs)."""
    results = benchmark(
        path, backend=backend, batches=bench.batches, warmup=bench.warmup, iters=bench.iters, seed=repeat
    ).results
    advance(1)
    return results


def _report(recipe, model_label, source, result, built, validation, latency, started, finished) -> dict:
    s = result.summary
    groups = s["groups"]
    return {
        "model": {
            "path": model_label,
            "sha256": sha256_file(Path(source)),
            "inputs": {name: [int(d) for d in dims] for name, dims in result.graph.input_shapes.items()},
        },
        "recipe": recipe.to_report(),
        "target": {"backend": built.backend, "precision": built.precision, "device": _device(built)},
        "versions": _versions(),
        "cost": {k: s[k] for k in ("params_before", "params_after", "flops_before", "flops_after")},
        "pruning": {
            "criterion": s["criterion"] if s["criterion"] == "dead" else f"dead+{s['criterion']}",
            "groups": len(groups),
            "groups_pruned": sum(1 for g in groups if g["removed"]),
            "channels_total": sum(g["channels"] for g in groups),
            "channels_removed": s["channels_removed"],
            "pinned": s["pinned"],
        },
        "plan": {
            "groups": [
                {
                    "id": g["id"],
                    "label": g["label"],
                    "size": g["channels"],
                    "kept": g["kept"],
                    "pinned": len(result.graph.group(g["id"]).pinned_channels),
                    "prunable": g["prunable"],
                }
                for g in groups
            ],
            "notes": list(result.plan.notes),
        },
        "validation": validation.to_json(),
        "latency": latency,
        "warnings": list(s["warnings"]),
        "timestamps": {"started": started.isoformat(), "finished": finished.isoformat()},
        "extra": {"output_change": s.get("output_change"), "dead_removed": s["dead_removed"]},
    }


def _device(built) -> str:
    """Where the compact model runs: the build metadata's `device` (one schema for every backend)."""
    return str(built.metadata["device"])


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in ("deploysparse", "onnx", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "polygraphy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
