"""report.json of one run: what was pruned, built, validated and measured, and every file's hash.

The dict this module assembles is what `deploysparse run` and every sweep point write (through
`deploysparse.report.write_report`, which checks it against the report schema and renders
report.html), and what `deploysparse check` compares.
"""

from __future__ import annotations

from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from deploysparse import api
from deploysparse.backends.base import SHARED_METADATA, BuildResult
from deploysparse.hashing import sha256_file
from deploysparse.modelio import external_data_files
from deploysparse.pipeline.original import OriginalFacts
from deploysparse.pipeline.speed import Speed
from deploysparse.recipe import Recipe
from deploysparse.validate import ValidationReport


def assemble_report(
    recipe: Recipe,
    model_label: str,
    source: str,
    result: api.PruneResult,
    built: BuildResult,
    validation: ValidationReport,
    speed: Speed,
    started: datetime,
    staging: Path,
    original_facts: OriginalFacts,
    quantization: dict | None = None,
) -> dict:
    """The report.json dict of one run, with the sha256 of every file in `staging`. `quantization`:
    `steps.quantization_summary`'s section; its finding (int8 not faster) is also a warning."""
    finished = datetime.now(timezone.utc)
    validation.original = model_label
    report = _report(recipe, model_label, source, result, built, validation, speed.latency, started, finished)
    report["model"]["inputs"] = {name: list(dims) for name, dims in original_facts.shapes.shapes.items()}
    report["model"]["shape_source"] = original_facts.shapes.source
    report["target"]["device"] = speed.device or _device(built)
    report["layers"] = speed.layers
    report["quantization"] = quantization
    if quantization and quantization["finding"]:
        report["warnings"].append(quantization["finding"])
    report["extra"]["denormals"] = {
        "original": original_facts.denormals.to_json(),
        "flushed_by_prune": result.summary.get("denormals_flushed"),
    }
    report["extra"]["build"] = _build_section(built, staging)
    if built.not_built:
        report["warnings"].append(
            f"{built.backend}: {built.not_built}; {report['extra']['build']['artifact']} was validated on "
            f"{built.runs_on} instead and no latency was measured"
        )
    report["artifacts"] = {
        p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()
    }
    report["artifact_data"] = {  # model -> the external data files it reads
        p.relative_to(staging).as_posix(): [d.relative_to(staging).as_posix() for d in data]
        for p in sorted(staging.rglob("*.onnx"))
        if (data := external_data_files(p))
    }
    return report


def _report(recipe, model_label, source, result, built, validation, latency, started, finished) -> dict:
    s = result.summary
    groups = s["groups"]
    return {
        "model": {
            "path": model_label,
            "sha256": sha256_file(Path(source)),
        },
        "recipe": recipe.to_report(),
        "target": {"backend": built.backend, "precision": built.precision},
        "versions": _versions(),
        "cost": {k: s[k] for k in ("params_before", "params_after", "flops_before", "flops_after")},
        "pruning": {
            "criterion": s["criterion"] if s["criterion"] == "dead" else f"dead+{s['criterion']}",
            "groups": len(groups),
            "groups_pruned": sum(1 for g in groups if g["removed"]),
            "channels_total": sum(g["channels"] for g in groups),
            "channels_removed": s["channels_removed"],
            "pinned": s["pinned"],
            **{key: s[key] for key in ("pinned_by_op", "budget_met", "budget", "capped")},
            "dead": s["dead"],
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


def _build_section(built: BuildResult, staging: Path) -> dict:
    """report.json's extra.build: what was built and where it runs, with the backend's own metadata
    (its artefact's validation, the commands that build an engine on the device, ...)."""
    return {
        "artifact": built.artifact.relative_to(staging).as_posix(),
        "folder": built.artifact.parent.relative_to(staging).as_posix(),
        "runs_on": built.runs_on,
        "not_built": built.not_built,
        **{k: v for k, v in built.metadata.items() if k not in SHARED_METADATA},
    }


def _device(built: BuildResult) -> str:
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
