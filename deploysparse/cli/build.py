"""`deploysparse build`: build a model for a backend, check TensorRT op support, or write a TensorRT
artefact with the commands that build its engine on the device (both without TensorRT)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from deploysparse import progress
from deploysparse.backends.notes import build_notes
from deploysparse.backends.quantize import CALIBRATION_CHOICES, INT8_LAYERS, Int8Options, summary_lines
from deploysparse.backends.trt_versions import VERSION_HELP
from deploysparse.cli.options import (
    backend_option,
    input_shape_option,
    json_quiet_options,
    parse_input_shapes,
)
from deploysparse.precision import DEFAULT_PRECISION, PRECISIONS, SPARSITY_PATTERNS


@click.command("build")
@click.argument("model", type=click.Path(path_type=Path))
@backend_option("The runtime to build for (its artifact and metadata go into -o).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=DEFAULT_PRECISION, show_default=True)
@click.option(
    "--calib", help="Calibration data for int8: .npy, .npz keyed by input name, or an image folder."
)
@click.option(
    "--shapes",
    multiple=True,
    help="NAME:MIN,OPT,MAX shapes for a dynamic input, e.g. input:1x3x32x32,8x3x32x32,32x3x32x32 (repeatable).",
)
@input_shape_option(
    "The shape the model runs at: TensorRT builds its profile for it where --shapes says nothing; recorded "
    "in the metadata."
)
@click.option(
    "--int8-layers",
    type=click.Choice(INT8_LAYERS),
    default="auto",
    show_default=True,
    help="int8 on ONNX Runtime: auto keeps in float the layers measured slower in int8 (or least "
    "accurate when the held-out agreement falls short); all quantises every layer.",
)
@click.option(
    "--calib-method",
    type=click.Choice(CALIBRATION_CHOICES),
    default="auto",
    show_default=True,
    help="int8 activation ranges: auto picks the method agreeing best with fp32 on held-out calibration "
    "samples (or on --judge-data).",
)
@click.option(
    "--judge-data",
    help="int8 on ONNX Runtime: inputs to judge the calibration method and float layers on (agreement "
    "with fp32, no labels; e.g. the validation images); then every --calib sample calibrates "
    "[a fifth of --calib held out].",
)
@click.option("--workspace", "workspace_mb", type=int, help="TensorRT builder workspace limit in MB.")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), help="Output folder.")
@click.option(
    "--check-only",
    "--dry-run",
    "check_only",
    is_flag=True,
    help="TensorRT: only check op support (no TensorRT needed).",
)
@click.option(
    "--emit-command",
    is_flag=True,
    help="TensorRT: write the validated artefact and the trtexec/polygraphy commands, no engine "
    "(no TensorRT needed).",
)
@click.option("--trt-version", help=VERSION_HELP)
@click.option(
    "--sparsity",
    type=click.Choice(SPARSITY_PATTERNS),
    help="TensorRT: prune the weights of the layers sparse tensor cores can run to this pattern.",
)
@click.option(
    "--keep-denormals",
    is_flag=True,
    help="Keep denormal float32 weights (by default the build sets them to zero; the input file is untouched).",
)
@json_quiet_options("the result")
@click.pass_context
def command(
    ctx,
    model,
    backend,
    precision,
    calib,
    shapes,
    input_shape,
    int8_layers,
    calib_method,
    judge_data,
    workspace_mb,
    out_dir,
    check_only,
    emit_command,
    trt_version,
    sparsity,
    keep_denormals,
    as_json,
    quiet,
):
    """Build MODEL for a backend: an optimised ONNX Runtime model or a TensorRT engine, plus metadata."""
    from deploysparse.backends import get_backend, parse_shapes
    from deploysparse.errors import UsageError

    progress.set_quiet(quiet or as_json)
    if check_only:
        return _check_only(ctx, model, backend, trt_version, as_json)
    if out_dir is None:
        raise UsageError("build needs -o/--output FOLDER for the built model")
    if judge_data is not None and (precision != "int8" or backend != "onnxruntime"):
        raise UsageError("--judge-data applies to --precision int8 on --backend onnxruntime")
    options = {}
    if backend == "tensorrt":
        options = {"trt_version": trt_version, "engine": "emit" if emit_command else "build"}
    elif emit_command or trt_version:
        raise UsageError(
            f"--{'emit-command' if emit_command else 'trt-version'} applies to --backend tensorrt"
        )
    result = get_backend(backend, **options).build(
        model,
        out_dir,
        precision=precision,
        calib=calib,
        shapes=parse_shapes(shapes),
        workspace_mb=workspace_mb,
        keep_denormals=keep_denormals,
        input_shapes=parse_input_shapes(input_shape),
        int8=Int8Options(int8_layers, calib_method, judge=judge_data),
        sparsity=sparsity,
    )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        made = "wrote" if result.not_built else "built"
        click.echo(f"{made} {result.artifact} ({backend}, {precision})")
        if result.metadata.get("denormals_flushed"):
            click.echo(
                f"  set {result.metadata['denormals_flushed']:,} denormal float32 weights to zero "
                "(--keep-denormals keeps them)"
            )
        for line in build_notes(result.metadata, folder=f"{out_dir}/"):
            click.echo(f"  {line}")
        for path in result.files:
            if path != result.artifact:
                click.echo(f"  wrote {path}")
        if isinstance(result.metadata.get("quantization"), dict):  # run prints its own int8 lines
            for line in summary_lines(result.metadata["quantization"]):
                click.echo(f"  {line}")
    validation = result.metadata.get("artifact_validation")
    if validation and not validation["passed"]:
        ctx.exit(1)  # a regression: the artefact does not answer like the fp32 model
    return 0


def _check_only(ctx: click.Context, model: Path, backend: str, trt_version: str | None, as_json: bool) -> int:
    from deploysparse.backends.trt_support import check_onnx
    from deploysparse.errors import UsageError
    from deploysparse.modelio import load_model

    if backend != "tensorrt":
        raise UsageError("--check-only checks TensorRT op support; use it with --backend tensorrt")
    report = check_onnx(load_model(model), trt_version)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(f"{model}: {report.summary()} (checked against {report.table})")
        for finding in report.unsupported:
            click.echo(f"  {finding.node}: {finding.reason}")
        for warning in report.warnings:
            click.echo(f"  warning: {warning}")
    if not report.ok:
        ctx.exit(1)
    return 0
