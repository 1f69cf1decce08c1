"""`deploysparse run RECIPE --model M -o OUTDIR`: prune, build, validate, bench and report, as a recipe says.

Exit codes after the report is written: 1 when validation failed, else 3 when the recipe says
`prune: strict: true` and the budget was not met (report.json's pruning.budget_met), else 0.
"""

from __future__ import annotations

import click

from deploysparse.backends.notes import build_notes
from deploysparse.cli import BUDGET_UNMET_EXIT_CODE
from deploysparse.cli.options import echo_json, input_shape_option, parse_input_shapes


@click.command("run")
@click.argument("recipe")
@click.option("--model", required=True, help="The model: .onnx or package.module:factory.")
@click.option("--weights", help="State dict for an entry-point model (loaded with weights_only=True).")
@input_shape_option(
    "The shape the run analyses, builds and benchmarks at (wins over the recipe's input_shape; default: "
    "the data's); an entry point is exported at it."
)
@click.option("--calib", help="Calibration data (.npy/.npz/image folder); overrides the recipe's.")
@click.option("--data", help="Validation inputs (default: the calibration data).")
@click.option("--labels", help="Validation labels (.npy of class indices) for accuracy.")
@click.option("-o", "--outdir", required=True, help="Output folder (files are replaced atomically).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
def command(recipe, model, weights, input_shape, calib, data, labels, outdir, as_json) -> None:
    """Run the pipeline RECIPE (a YAML file or a packaged name like x86-cpu-onnxruntime) describes."""
    from deploysparse.cli.signals import sigterm_raises
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
        input_shapes=parse_input_shapes(input_shape),
    )
    with sigterm_raises():  # stopped: the staging folder is removed, as on success or error
        report = run_recipe(loaded, inputs, outdir)
    if as_json:
        echo_json(report)
    else:
        print_summary(report, outdir)
    if not report["validation"]["passed"]:
        raise SystemExit(1)
    if loaded.prune.strict and not report["pruning"]["budget_met"]:
        from deploysparse.budget import BudgetOutcome

        outcome = BudgetOutcome.from_json(report["pruning"]["budget"])
        click.echo(f"error: strict: {outcome.describe()} (recipe {loaded.name})", err=True)
        raise SystemExit(BUDGET_UNMET_EXIT_CODE)


def print_summary(report: dict, outdir: str) -> None:
    """The final table a person reads after a run, and the report's warnings (a budget not met, the
    groups --max-layer-ratio held, ...), one line each."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(soft_wrap=True)
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
    shapes = ", ".join(
        f"{name} {'x'.join(map(str, dims))}" for name, dims in report["model"]["inputs"].items()
    )
    console.print(f"inputs: {shapes} (from {report['model']['shape_source']})", markup=False)
    for skipped in report["latency"].get("skipped_batches", []):
        console.print(f"skipped batch {skipped['batch']}: {skipped['reason']}", markup=False)
    for line in _precision_lines(report):
        console.print(line, markup=False)
    console.print(
        f"channels removed: {report['pruning']['channels_removed']} of {report['pruning']['channels_total']} "
        f"({report['pruning']['criterion']}); max abs err {v['max_abs_err']:.3g}, "
        f"top-1 agreement {v.get('top1_agreement')}, validation {'passed' if v['passed'] else 'FAILED'}"
    )
    for warning in report["warnings"] + v.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    build = report["extra"].get("build") or {}
    for line in build_notes(build, folder=f"{outdir}/{build.get('folder', 'build')}/"):
        console.print(line, markup=False, highlight=False, soft_wrap=True)  # commands stay one line
    console.print(f"report: {outdir}/report.html")


def _precision_lines(report: dict) -> list[str]:
    """How the precision paid: the speed-up split into pruning and precision at each batch, the int8
    scheme and its agreement with the compact model in fp32, and the finding when int8 did not pay."""
    from deploysparse.report import parse_report

    rep = parse_report(report)
    precision = rep.target.precision
    lines = [
        f"speed-up at batch {batch}: {together:.2f}x = pruning {pruning:.2f}x (original -> compact fp32) "
        f"x {precision} {by_precision:.2f}x (compact fp32 -> compact {precision})"
        for batch, pruning, by_precision, together in rep.latency.precision_splits()
    ]
    q = rep.quantization
    if q is not None:
        agreement = (
            f", top-1 agreement with fp32 {q.top1_agreement:.4f}" if q.top1_agreement is not None else ""
        )
        lines.append(f"int8: {q.scheme}; {len(q.float_layers)} layer(s) kept in float{agreement}")
        if q.finding:
            lines.append(q.finding)
    return lines
