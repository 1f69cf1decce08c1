"""`deploysparse prune MODEL -o OUT.onnx`: remove channels from the graph and write the compact model.

A budget the plan could not meet is one warning line (what was reached, what the pins hold) and
`budget_met: false` in --json; with --strict the command then exits with BUDGET_UNMET_EXIT_CODE (3)
after writing its outputs, so a CI script that checks the exit code sees the miss.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from deploysparse.cli import BUDGET_UNMET_EXIT_CODE
from deploysparse.cli.options import (
    analysis_options,
    budget_from,
    budget_options,
    criterion_option,
    echo_json,
    parse_input_shapes,
)


@click.command("prune")
@click.argument("model")
@click.option("-o", "--output", required=True, help="Compact ONNX to write (never the input).")
@criterion_option
@analysis_options
@click.option("--plan", "plan_in", help="Apply this saved plan.json instead of a criterion.")
@click.option("--plan-out", help="Write the plan that was applied (plan.json).")
@budget_options
@click.option("--weights", help="State dict for an entry-point MODEL (loaded with weights_only=True).")
@click.option(
    "--keep-denormals",
    is_flag=True,
    help="Keep denormal float32 weights (by default they are set to zero: slow on x86, below float32's resolution).",
)
@click.option(
    "--strict",
    is_flag=True,
    help=f"Exit with code {BUDGET_UNMET_EXIT_CODE} when the budget's target is not met (outputs are still written).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def command(
    model: str,
    output: str,
    criterion: str,
    calib: str | None,
    input_shape: tuple[str, ...],
    dead_threshold: float,
    plan_in: str | None,
    plan_out: str | None,
    weights: str | None,
    keep_denormals: bool,
    strict: bool,
    as_json: bool,
    **budget_fields: Any,
) -> None:
    """Prune MODEL (.onnx or package.module:factory) and write the compact ONNX to OUTPUT."""
    from deploysparse import api
    from deploysparse.criteria import budget_for
    from deploysparse.output_guard import reads, refuse_overlap, writes

    budget = budget_from(budget_fields)
    refuse_overlap(
        [*writes("-o", output, "model"), *writes("--plan-out", plan_out)],
        [
            *reads("the input model", model if Path(model).exists() else None, "model"),
            *reads("--calib", calib),
            *reads("--plan", plan_in),
            *reads("--weights", weights),
        ],
    )
    shapes = parse_input_shapes(input_shape)
    budget = budget_for(criterion, budget)  # dead: no target, and of the limits only the rounding
    with tempfile.TemporaryDirectory(prefix="deploysparse-") as workdir:
        onnx_path, module = _resolve(model, weights, shapes, workdir, calib)
        result = api.prune(
            onnx_path,
            module=module,
            criterion=criterion,
            calib=calib,
            input_shapes=shapes,
            plan=plan_in,
            dead_threshold=dead_threshold,
            keep_denormals=keep_denormals,
            budget=budget,
        )
        api.save_outputs(result, output, plan_out)
    summary = result.summary
    if as_json:
        echo_json(summary)
    else:
        _print_summary(summary, criterion, output, plan_out)
    if strict and not summary["budget_met"]:
        from deploysparse.budget import BudgetOutcome

        click.echo(f"error: --strict: {BudgetOutcome.from_json(summary['budget']).describe()}", err=True)
        raise SystemExit(BUDGET_UNMET_EXIT_CODE)


def _print_summary(summary: dict, criterion: str, output: str, plan_out: str | None) -> None:
    """What a person reads after `prune`: the counts, the output change, and every warning."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=False, soft_wrap=True)  # one line stays one line in a CI log
    console.print(
        f"{criterion}: removed {summary['channels_removed']} channels in "
        f"{sum(1 for g in summary['groups'] if g['removed'])} groups; params {summary['params_before']:,} -> "
        f"{summary['params_after']:,}; MACs {summary['flops_before']:,} -> {summary['flops_after']:,}"
    )
    if summary["dead"]["found"] and not summary["dead"]["kept"]:  # else it is among the warnings
        console.print(summary["dead"]["message"])
    if "output_change" in summary:
        change = summary["output_change"]
        console.print(f"output change on {change['samples']} samples: max abs {change['max_abs']:.3g}")
    if "latency" in summary:
        lat = summary["latency"]
        console.print(
            f"latency on {lat['backend']} at batch {lat['batch']} ({lat['allocation']}): predicted {lat['predicted_ms']:.3g} ms "
            f"(original {lat['predicted_original_ms']:.3g}), measured {lat['measured_ms']:.3g} ms "
            f"(original {lat['measured_original_ms']:.3g}, {lat['measured_fraction']:.1%})"
        )
    flushed = summary.get("denormals_flushed") or {}
    if flushed.get("total"):
        from deploysparse.denormals import DenormalCount

        count = DenormalCount(flushed["tensors"], flushed.get("folded", 0))
        console.print(f"set to zero (--keep-denormals keeps them): {count.describe()}")
    for w in summary["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}")
    console.print(f"wrote {output}" + (f" and {plan_out}" if plan_out else ""))


def _resolve(model: str, weights: str | None, shapes, workdir: str, calib: str | None):
    """(.onnx path, nn.Module or None) for MODEL, as deploysparse.frontend.model_source reads it: a
    file as is, an entry point exported first (needs the PyTorch extra) and its module kept so
    criteria read activations through forward hooks."""
    from deploysparse.frontend.model_source import is_entry_point, resolve_model

    calib_shape = _calib_shape(calib) if is_entry_point(model) else None
    shape = next(iter(shapes.values())) if shapes else None
    resolved = resolve_model(
        model, weights=weights, input_shape=shape, workdir=workdir, calib_shape=calib_shape
    )
    return str(resolved.onnx_path), resolved.module


def _calib_shape(calib: str | None) -> tuple[int, ...] | None:
    """The shape of one sample of a .npy calibration array (an entry point's input shape)."""
    if not (calib and calib.endswith(".npy")):
        return None
    import numpy as np

    from deploysparse.errors import CalibrationError

    try:
        return (1, *np.load(calib, mmap_mode="r").shape[1:])
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{calib}: not a readable .npy array ({exc})") from exc
