"""One point of a sweep: prune -> (fine-tune) -> build -> validate -> bench, with `deploysparse run`'s steps.

The same function runs in-process and inside a Ray Tune trial; only latency measurement differs (on a
cluster it runs as a task on a node with the benchmark resource label), so it is passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deploysparse.errors import DeploysparseError
from deploysparse.modelio import load_model
from deploysparse.pipeline import (
    OriginalFacts,
    assemble_report,
    build_and_validate,
    measure_speed,
    prune_with_recipe,
    save_compact,
)
from deploysparse.recipe import Recipe
from deploysparse.report import write_report
from deploysparse.validate import load_labels

# (recipe, original model path, compact artifact path) -> (latency section of report.json, device)
MeasureLatency = Callable[[Recipe, str, Path], tuple[dict, str]]


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


def measure_here(recipe: Recipe, original: str, compact: Path) -> tuple[dict, str]:
    """Latency measured in this process (original, its denormal-flushed copy and compact interleaved,
    as `deploysparse run` does; no per-layer profile, to keep points short)."""
    from deploysparse.backends import get_backend

    latency, _ = measure_speed(recipe, original, compact)
    return latency, get_backend(recipe.build.backend).device()


def run_point(job: PointJob, staging: Path, measure: MeasureLatency = measure_here) -> dict[str, Any]:
    """Run every step of one point into `staging` (report.json, report.html, compact.onnx, ...);
    return its row for results.jsonl. Bad input raises a DeploysparseError."""
    start = time.perf_counter()
    started = datetime.now(timezone.utc)
    recipe = job.recipe
    # One load for prune, build and the report (measure may run on another node: it reads the file).
    original = load_model(job.source)
    result = prune_with_recipe(recipe, job.source, job.calib, original_model=original)
    facts = OriginalFacts.of(original)
    del original  # not held through fine-tuning, build and benchmark
    compact_model = _finetuned(job, result, staging) if job.finetune is not None else None
    compact_path = save_compact(result, staging, compact_model)
    labels = load_labels(job.labels) if job.labels else None
    built, validation = build_and_validate(
        recipe, job.source, compact_path, staging, job.calib, job.data, labels, original_facts=facts
    )
    latency, device = measure(recipe, job.source, built.artifact)
    report = assemble_report(
        recipe,
        job.model,
        job.source,
        result,
        built,
        validation,
        latency,
        started,
        staging,
        original_facts=facts,
    )
    report["target"]["device"] = device
    report["extra"]["sweep"] = {
        "key": job.key,
        "settings": job.settings,
        "finetune": None
        if job.finetune is None
        else {"function": job.finetune_name, "args": job.finetune_args},
    }
    write_report(report, staging)
    return summarize(job, report, built.artifact, time.perf_counter() - start)


def _finetuned(job: PointJob, result, staging: Path):
    """The compact nn.Module (apply_plan), trained by the user's function, exported again to ONNX."""
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
        "device": report["target"]["device"],
        "seconds": round(seconds, 2),
        "error": None,
    }
