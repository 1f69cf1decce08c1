"""`deploysparse validate`: compare the compact model with the original on real data; exit 1 on failure."""

from __future__ import annotations

import json
from pathlib import Path

import click

from deploysparse import progress


def _off_or_float(value: str | None) -> float | None:
    """Tolerance options take a number, or 'off' to skip that check."""
    if value is None or value.lower() == "off":
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise click.BadParameter(f"expected a number or 'off', got {value!r}") from exc


@click.command("validate")
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("compact", type=click.Path(path_type=Path))
@click.option(
    "--data", required=True, help="Inputs: .npy (single input), .npz keyed by input name, or an image folder."
)
@click.option(
    "--labels", type=click.Path(path_type=Path), help="Class labels (.npy of ints) to score accuracy."
)
@click.option(
    "--backend",
    type=click.Choice(["onnxruntime", "tensorrt"]),
    default="onnxruntime",
    show_default=True,
    help="Runs COMPACT (an .onnx, or an engine for tensorrt); the original always runs on ONNX Runtime.",
)
@click.option(
    "--atol", default="1e-4", show_default=True, help="Absolute tolerance per element ('off' to skip)."
)
@click.option(
    "--rtol", default="1e-3", show_default=True, help="Relative tolerance per element ('off' to skip)."
)
@click.option(
    "--min-cosine", default="0.999", show_default=True, help="Minimum cosine similarity per output."
)
@click.option(
    "--min-top1", default="off", show_default=True, help="Minimum top-1 agreement for (N, classes) outputs."
)
@click.option(
    "--max-acc-drop", default="off", show_default=True, help="Maximum accuracy drop (fraction) with --labels."
)
@click.option(
    "--batch",
    "batch_size",
    type=int,
    default=32,
    show_default=True,
    help="Batch size for dynamic-batch models.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def command(
    ctx,
    original,
    compact,
    data,
    labels,
    backend,
    atol,
    rtol,
    min_cosine,
    min_top1,
    max_acc_drop,
    batch_size,
    as_json,
    quiet,
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
        atol=_off_or_float(atol),
        rtol=_off_or_float(rtol),
        min_cosine=_off_or_float(min_cosine),
        min_top1=_off_or_float(min_top1),
        max_accuracy_drop=_off_or_float(max_acc_drop),
        batch_size=batch_size,
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
    for out in report.outputs:
        top1 = "" if out.top1_agreement is None else f"  top-1 agreement {out.top1_agreement:.4f}"
        click.echo(
            f"  {out.name}: max abs err {out.max_abs_err:.3g}  max rel err {out.max_rel_err:.3g}  "
            f"cosine {out.cosine:.6f}{top1}"
        )
    if report.accuracy_original is not None:
        click.echo(
            f"  accuracy: original {report.accuracy_original:.4f}  compact {report.accuracy_compact:.4f}"
        )
    for failure in report.failures:
        click.echo(f"  FAIL {failure}")
    click.echo("PASSED" if report.passed else "FAILED")
