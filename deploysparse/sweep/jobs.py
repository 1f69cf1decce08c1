"""A sweep point as a job: its recipe and content-hash key, and the row of a point that failed.

Both the in-process runner and the Ray runner build jobs the same way, so this sits below both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploysparse.sweep.config import Sweep, point_recipe
from deploysparse.sweep.inputs import PreparedInputs, PreparedModel, point_key
from deploysparse.sweep.point import PointJob


def make_job(
    sweep: Sweep,
    inputs: PreparedInputs,
    model: PreparedModel,
    settings: dict[str, Any],
    paths: dict[str, Path] | None = None,
) -> PointJob:
    """One point: the base recipe with `settings` (and the model's `input_shape`, the shape its
    points run at), keyed by the hash of model, data and settings.

    `paths` maps a blob's sha256 to where it lies on this machine (a Ray worker's cache); by default
    the driver's store. The key depends on hashes only, so it is the same on every machine.
    """
    recipe = point_recipe(sweep.base_recipe, settings)
    if model.spec.input_shape is not None:  # the model's own shape wins over the base recipe's
        recipe = recipe.model_copy(update={"input_shape": list(model.spec.input_shape)})
    finetune = sweep.finetune.model_dump(mode="json") if sweep.finetune else None
    identity = recipe.model_dump(mode="json", by_alias=True, exclude={"name", "description", "check"})
    local = {**inputs.blobs, **(paths or {})}
    return PointJob(
        key=point_key(model.onnx, inputs, identity, finetune),
        model=model.spec.model,
        model_label=model.spec.label,
        settings=dict(settings),
        recipe=recipe,
        source=str(local[model.onnx.sha256]),
        calib=str(local[inputs.calib.sha256]),
        data=str(local[inputs.val.sha256]),
        labels=str(local[inputs.labels.sha256]) if inputs.labels else None,
        module=model.module,
        finetune=inputs.finetune,
        finetune_args=dict(sweep.finetune.args) if sweep.finetune else None,
        finetune_name=sweep.finetune.function if sweep.finetune else None,
    )


def failed_row(job: PointJob, error: str, trace: str | None = None) -> dict[str, Any]:
    """The row of a point that did not finish: its settings, why, and (for a crash) the traceback."""
    return {
        "key": job.key,
        "status": "failed",
        "model": job.model_label,
        **job.settings,
        "finetune": job.finetune_name,
        "error": error.splitlines()[0] if error else "failed",
        "traceback": trace,
    }
