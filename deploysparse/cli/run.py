"""`deploysparse run RECIPE --model M -o OUTDIR`: prune, build, validate, bench and report, as a recipe says."""

from __future__ import annotations

import click

from deploysparse.backends.notes import build_notes
from deploysparse.cli.options import echo_json


@click.command("run")
@click.argument("recipe")
@click.option("--model", required=True, help="The model: .onnx or package.module:factory.")
@click.option("--weights", help="State dict for an entry-point model (loaded with weights_only=True).")
@click.option("--input-shape", help="Input shape for an entry-point model, e.g. 1,3,32,32.")
@click.option("--calib", help="Calibration data (.npy/.npz/image folder); overrides the recipe's.")
@click.option("--data", help="Validation inputs (default: the calibration data).")
@click.option("--labels", help="Validation labels (.npy of class indices) for accuracy.")
@click.option("-o", "--outdir", required=True, help="Output folder (files are replaced atomically).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
def command(recipe, model, weights, input_shape, calib, data, labels, outdir, as_json) -> None:
    """Run the pipeline RECIPE (a YAML file or a packaged name like x86-cpu-onnxruntime) describes."""
    from deploysparse.cli.signals import sigterm_raises
    from deploysparse.frontend.model_source import parse_input_shape
    from deploysparse.pipeline import RunInputs, run_recipe
    from deploysparse.progress import set_quiet
    from deploysparse.recipe import load_recipe

    if as_json:
        set_quiet(True)
    loaded = load_recipe(recipe)
    inputs = RunInputs(
        model=model,
        calib=calib,
        data=data,
        labels=labels,
        weights=weights,
        input_shape=list(parse_input_shape(input_shape)) if input_shape else None,
    )
    with sigterm_raises():  # stopped: the staging folder is removed, as on success or error
        report = run_recipe(loaded, inputs, outdir)
    if as_json:
        echo_json(report)
    else:
        print_summary(report, outdir)
    if not report["validation"]["passed"]:
        raise SystemExit(1)


def print_summary(report: dict, outdir: str) -> None:
    """The final table a person reads after a run."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cost, v = report["cost"], report["validation"]
    table = Table(title=f"deploysparse run: {report['recipe']['name']}")
    table.add_column("")
    table.add_column("original", justify="right")
    table.add_column("compact", justify="right")
    table.add_row("params", f"{cost['params_before']:,}", f"{cost['params_after']:,}")
    table.add_row("MACs", f"{cost['flops_before']:,}", f"{cost['flops_after']:,}")
    for orig, comp in zip(report["latency"]["original"], report["latency"]["compact"], strict=False):
        table.add_row(f"p50 ms @ batch {orig['batch']}", f"{orig['p50_ms']:.3f}", f"{comp['p50_ms']:.3f}")
    if v.get("accuracy_original") is not None:
        table.add_row("accuracy", f"{v['accuracy_original']:.4f}", f"{v['accuracy_compact']:.4f}")
    console.print(table)
    console.print(
        f"channels removed: {report['pruning']['channels_removed']} of {report['pruning']['channels_total']} "
        f"({report['pruning']['criterion']}); max abs err {v['max_abs_err']:.3g}, "
        f"top-1 agreement {v.get('top1_agreement')}, validation {'passed' if v['passed'] else 'FAILED'}"
    )
    build = report["extra"].get("build") or {}
    for line in build_notes(build, folder=f"{outdir}/{build.get('folder', 'build')}/"):
        console.print(line, markup=False, highlight=False, soft_wrap=True)  # commands stay one line
    console.print(f"report: {outdir}/report.html")
