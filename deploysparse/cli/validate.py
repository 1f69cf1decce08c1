"""`deploysparse validate`: compare the compact model with the original on real data; exit 1 on failure."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from deploysparse import progress
from deploysparse.cli.options import (
    backend_option,
    count_option,
    input_shape_option,
    json_quiet_options,
    parse_input_shapes,
)
from deploysparse.precision import PRECISIONS, defaults_help

# The tolerance options, one per Tolerances field: (option, field, what it bounds). Each takes a
# number, 'off' or nothing (the default of the precision validated), and its help shows those defaults.
_TOLERANCE_OPTIONS = (
    ("--atol", "atol", "Absolute tolerance per element ('off' to skip)"),
    ("--rtol", "rtol", "Tolerance relative to |original| per element"),
    ("--min-cosine", "min_cosine", "Minimum cosine similarity per output"),
    ("--min-top1", "min_top1", "Minimum top-1 agreement for (N, classes) outputs"),
    ("--max-acc-drop", "max_accuracy_drop", "Maximum accuracy drop (fraction) with --labels"),
)


def _tolerance_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the tolerance options to a click command, each passed as its Tolerances field's name."""
    for option, name, bounds in reversed(_TOLERANCE_OPTIONS):
        declare = click.option(option, name, callback=_tolerance, help=f"{bounds} {defaults_help(name)}.")
        command = declare(command)
    return command


def _tolerance(ctx: click.Context, param: click.Parameter, value: str | None):
    return _off_or_float(value)


def _off_or_float(value: str | None):
    """Tolerance options take a number >= 0, 'off' to skip that check, or nothing for the default of
    the precision being validated."""
    from deploysparse.validate import PRECISION_DEFAULT

    if value is None:
        return PRECISION_DEFAULT
    if value.lower() == "off":
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise click.BadParameter(f"expected a finite number >= 0 or 'off', got {value!r}")
    return number


@click.command("validate")
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("compact", type=click.Path(path_type=Path))
@click.option(
    "--data", required=True, help="Inputs: .npy (single input), .npz keyed by input name, or an image folder."
)
@click.option(
    "--labels", type=click.Path(path_type=Path), help="Class labels (.npy of ints) to score accuracy."
)
@backend_option(
    "Runs COMPACT (an .onnx, or the artifact `build` wrote for the backend); the original always runs on "
    "the reference backend (ONNX Runtime)."
)
@_tolerance_options
@count_option("--batch", "batch_size", default=32, help_text="Batch size for dynamic-batch models.")
@input_shape_option("Shape of the data's samples, checked against it (validation runs the data as it is).")
@click.option(
    "--precision",
    type=click.Choice(["auto", *PRECISIONS]),
    default="auto",
    show_default=True,
    help="Precision of COMPACT, which sets the default tolerances (auto: read from the model).",
)
@json_quiet_options("the report")
@click.pass_context
def command(
    ctx,
    original,
    compact,
    data,
    labels,
    backend,
    batch_size,
    input_shape,
    precision,
    as_json,
    quiet,
    **tolerances,
):
    """Check that COMPACT answers like ORIGINAL on --data; exit code 1 when a tolerance is not met."""
    from deploysparse.validate import validate

    progress.set_quiet(quiet or as_json)
    report = validate(
        original,
        compact,
        data,
        labels=labels,
        backend=backend,
        batch_size=batch_size,
        precision=None if precision == "auto" else precision,
        input_shapes=parse_input_shapes(input_shape),
        **tolerances,
    )
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print(report)
    if not report.passed:
        ctx.exit(1)
    return 0


def _print(report) -> None:
    click.echo(f"{report.compact} vs {report.original} on {report.samples} samples ({report.backend})")
    click.echo(f"  inputs: {report.shapes.describe()}")
    tol = report.tolerances
    bound = (
        f"|error| <= {tol.atol or 0:g} + {tol.rtol or 0:g} x |original|"
        if tol.elementwise
        else "no element-wise bound"
    )
    criteria = [bound]
    if tol.min_cosine is not None:
        criteria.append(f"cosine >= {tol.min_cosine}")
    if tol.min_top1 is not None:
        criteria.append(f"top-1 agreement >= {tol.min_top1}")
    if tol.max_accuracy_drop is not None:
        criteria.append(f"accuracy drop <= {tol.max_accuracy_drop}")
    click.echo(f"  criteria ({report.precision} defaults unless given): {'; '.join(criteria)}")
    for out in report.outputs:
        top1 = "" if out.top1_agreement is None else f"  top-1 agreement {out.top1_agreement:.4f}"
        cosine = (
            "cosine not judged (original near zero)"
            if out.reference_near_zero
            else f"cosine {out.cosine:.6f}"
        )
        click.echo(
            f"  {out.name}: max abs err {out.max_abs_err:.3g} ({out.max_rel_err:.3g} of max |original| "
            f"{out.reference_scale:.3g})  {cosine}{top1}"
        )
    if report.accuracy_original is not None:
        click.echo(
            f"  accuracy: original {report.accuracy_original:.4f}  compact {report.accuracy_compact:.4f}"
        )
    for warning in report.warnings:
        click.echo(f"  warning: {warning}")
    for failure in report.failures:
        click.echo(f"  FAIL {failure}")
    click.echo("PASSED" if report.passed else "FAILED")
