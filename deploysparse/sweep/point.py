"""One point of a sweep: `deploysparse run`'s steps (`pipeline.steps.run_steps`) on one recipe.

The same function runs in-process and inside a Ray Tune trial. Two hooks of the step sequence are a
sweep's own: the compact module may be fine-tuned before it is saved, and on a cluster speed is
measured by a task on a node with the benchmark resource label, so the measurement is passed in.
A point's report.json is otherwise the one `deploysparse run` would write for the same recipe and
files (flushed original and per-layer profile included; `bench.per_layer: false` in the sweep's
recipe skips the profile), plus `extra.sweep`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx

from deploysparse import api
from deploysparse.backends import get_backend
from deploysparse.errors import DeploysparseError
from deploysparse.modelio import load_model
from deploysparse.pipeline.original import OriginalFacts
from deploysparse.pipeline.speed import Speed, measure_speed
from deploysparse.pipeline.steps import Measure, RunSpec, StepHooks, run_steps
from deploysparse.recipe import Recipe
from deploysparse.report import write_report
from deploysparse.validate import load_labels


@dataclass
class PointJob:
    """What one point needs, with local paths (on a Ray worker: its cache of the blobs)."""

    key: str
    model: str  # the model as the sweep names it (report.json's model.path)
    model_label: str
    settings: dict[str, Any]
    recipe: Recipe
    source: str  # the original ONNX
    calib: str
    data: str
    labels: str | None
    module: Any = None  # the nn.Module, when fine-tuning
    finetune: Callable[..., Any] | None = None
    finetune_args: dict[str, Any] | None = None
    finetune_name: str | None = None


def measure_here(
    recipe: Recipe,
    original: str,
    artifact: Path,
    compact_onnx: Path,
    original_facts: OriginalFacts | None = None,
) -> Speed:
    """Speed measured in this process, as `deploysparse run` measures it, with the device named by
    the backend: every row of a sweep names its device the same way, measured here or on a Ray node."""
    speed = measure_speed(recipe, original, artifact, compact_onnx, original_facts)
    return dataclasses.replace(speed, device=get_backend(recipe.build.backend).device())


def run_point(job: PointJob, staging: Path, measure: Measure = measure_here) -> dict[str, Any]:
    """Run every step of one point into `staging` (report.json, report.html, compact.onnx, ...);
    return its row for results.jsonl. Bad input raises a DeploysparseError."""
    start = time.perf_counter()
    started = datetime.now(timezone.utc)
    labels = load_labels(job.labels) if job.labels else None
    spec = RunSpec(job.recipe, job.source, job.model, job.calib, job.data, labels)
    finetune = functools.partial(_finetuned, job) if job.finetune is not None else None
    outcome = run_steps(spec, staging, started, StepHooks(finetune=finetune, measure=measure))
    report = outcome.report
    report["extra"]["sweep"] = {
        "key": job.key,
        "settings": job.settings,
        "finetune": None
        if job.finetune is None
        else {"function": job.finetune_name, "args": job.finetune_args},
    }
    write_report(report, staging)
    return summarize(job, report, outcome.built.artifact, time.perf_counter() - start)


def _finetuned(job: PointJob, result: api.PruneResult, staging: Path) -> onnx.ModelProto:
    """The compact nn.Module (apply_plan), trained by the user's function, exported again to ONNX
    (the sweep's `finetune` hook of the steps; its scratch export in `staging` is removed)."""
    import torch

    from deploysparse.frontend.torch_export import export_onnx
    from deploysparse.torch import apply_plan

    if job.module is None:
        raise DeploysparseError(f"fine-tuning {job.model} needs its PyTorch module")
    compact = apply_plan(job.module, result)
    # An exception from the user's training propagates as it is: on Ray it may be transient (a lost
    # node, out of memory) and is retried; in-process the point is recorded as failed with it.
    trained = job.finetune(compact, **(job.finetune_args or {}))
    if not isinstance(trained, torch.nn.Module):
        raise DeploysparseError(
            f"finetune {job.finetune_name} returned {type(trained).__name__}, expected the trained nn.Module"
        )
    shape = next(iter(result.graph.input_shapes.values()))
    example = torch.randn([int(d) for d in shape], generator=torch.Generator().manual_seed(0))
    path = export_onnx(trained.eval(), example, staging / "finetuned" / "model.onnx")
    model = load_model(path)
    for leftover in sorted(path.parent.rglob("*"), reverse=True):
        leftover.unlink() if leftover.is_file() else leftover.rmdir()
    path.parent.rmdir()
    return model


def summarize(job: PointJob, report: dict, artifact: Path, seconds: float) -> dict[str, Any]:
    """The row of results.jsonl/csv: settings, hashes, the figures a selection rule reads, artefacts."""
    v = report["validation"]
    cost = report["cost"]
    if not report["latency"]["compact"]:  # the artifact was not built here (extra.build.not_built)
        raise DeploysparseError(
            f"{job.model_label}: {report['extra']['build']['not_built']}: a sweep point needs the compact "
            f"model's latency; run the sweep where the {report['target']['backend']} backend builds"
        )
    point = report["latency"]["compact"][0]
    accuracy = v.get("accuracy_compact")
    baseline = v.get("accuracy_original")
    if accuracy is None:  # no labels: agreement with the original stands in for accuracy
        accuracy, baseline = v.get("top1_agreement"), 1.0
    return {
        "key": job.key,
        "status": "ok",
        "model": job.model_label,
        "model_sha256": report["model"]["sha256"],
        **{f"{k}": v for k, v in job.settings.items()},
        "finetune": job.finetune_name,
        "accuracy": accuracy,
        "accuracy_original": baseline,
        "accuracy_drop": None if accuracy is None or baseline is None else baseline - accuracy,
        "top1_agreement": v.get("top1_agreement"),
        "passed": v["passed"],
        "p50_ms": point["p50_ms"],
        "p99_ms": point["p99_ms"],
        "original_p50_ms": report["latency"]["original"][0]["p50_ms"],
        "size_bytes": artifact.stat().st_size,
        "params": cost["params_after"],
        "flops": cost["flops_after"],
        "flops_ratio": cost["flops_after"] / max(cost["flops_before"], 1),
        "channels_removed": report["pruning"]["channels_removed"],
        "budget_met": report["pruning"]["budget_met"],
        "device": report["target"]["device"],
        "seconds": round(seconds, 2),
        "error": None,
    }
