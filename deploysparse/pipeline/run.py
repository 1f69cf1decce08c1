"""`deploysparse run`: the whole pipeline a recipe describes, into one output folder.

The steps are `deploysparse.pipeline.steps.run_steps`'s; this module owns the output folder.
Everything is written into a staging folder beside OUTDIR, the report last (its artifact hashes
read from the staged files, which are the published files), and the staging folder then becomes
OUTDIR in one step (`atomic.replace_folder`): a run that fails or is stopped (an exception, Ctrl-C,
or SIGTERM, which the CLI turns into an exception) leaves the previous OUTDIR as it was and no
staging folder; one killed outright (SIGKILL, power loss) leaves the previous OUTDIR and a
`.<OUTDIR>.staging-*` folder. A report.json in OUTDIR always describes the files beside it. Paths
inside the folder are written relative to it, so a copied or moved output folder still loads.

OUTDIR is replaced as a whole, so it may not hold an input, and an existing OUTDIR must be empty or
a previous run's output (it has a report.json): a folder of other files is never swept away.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from deploysparse.atomic import replace_folder
from deploysparse.errors import InternalError, UsageError
from deploysparse.output_guard import reads, refuse_overlap, writes
from deploysparse.pipeline.steps import RunSpec, run_steps
from deploysparse.recipe import Recipe
from deploysparse.report import ReportError, write_report


@dataclass
class RunInputs:
    """What the user points the recipe at."""

    model: str
    calib: str | None = None
    data: str | None = None
    labels: str | None = None
    weights: str | None = None
    # --input-shape, parsed (input name -> sizes; "" for the only input): the shape the run uses
    # (deploysparse.run_shapes), and an entry point's export shape
    input_shapes: Mapping[str, Sequence[int]] | None = None


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
    staging = _staging_path(outdir)
    try:
        staging.mkdir(mode=0o700)  # inside the try: stopped an instant after, it is still removed
        for name, source in (extra_files or {}).items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / name)
        report = run_steps(_spec(recipe, inputs, staging), staging, started).report
        try:
            write_report(report, staging)
        except ReportError as exc:  # our own report breaking our own schema is a bug, not bad input
            raise InternalError(f"the run's report does not fit the report schema ({exc})") from exc
        replace_folder(staging, outdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _staging_path(outdir: Path) -> Path:
    """A new name beside OUTDIR for the run's staging folder. Chosen before the folder is made (and
    the folder made inside the run's `try`), so no instant exists where the folder exists and the
    cleanup does not know it; 96 random bits, so no two runs ever pick the same name."""
    return outdir.parent / f".{outdir.name}.staging-{secrets.token_hex(12)}"


def _spec(recipe: Recipe, inputs: RunInputs, staging: Path) -> RunSpec:
    """The run's spec: the original as an ONNX file (an entry point exported into the staging
    folder), the calibration data (`--calib`, else the recipe's) and the validation data."""
    source = _resolve_source(inputs, staging)
    calib = inputs.calib or (str(recipe.calibration_path()) if recipe.calibration_path() else None)
    if calib is None and recipe.build.precision == "int8":
        raise UsageError("INT8 needs calibration data: give --calib or `build.calibration` in the recipe")
    data = inputs.data or calib
    if data is None:
        raise UsageError("validation needs data: give --data (or --calib) with inputs the model accepts")
    return RunSpec(recipe, source, inputs.model, calib, data, inputs.labels, inputs.input_shapes)


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


def _resolve_source(inputs: RunInputs, staging: Path) -> str:
    # a file as is, an entry point exported
    from deploysparse.frontend.model_source import is_entry_point, resolve_model

    shapes = list((inputs.input_shapes or {}).values())
    if len(shapes) > 1 and is_entry_point(inputs.model):
        raise UsageError(f"--input-shape: an entry point takes one input shape, got {len(shapes)}")
    resolved = resolve_model(
        inputs.model,
        weights=inputs.weights,
        input_shape=shapes[0] if shapes else None,
        workdir=staging / "source",
    )
    return str(resolved.onnx_path)
