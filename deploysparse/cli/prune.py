"""`deploysparse prune MODEL -o OUT.onnx`: remove channels from the graph and write the compact model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
from rich.console import Console

from deploysparse.cli.options import FINITE_NON_NEGATIVE, echo_json, parse_input_shapes
from deploysparse.errors import UsageError


@click.command("prune")
@click.argument("model")
@click.option("-o", "--output", required=True, help="Compact ONNX to write (never the input).")
@click.option(
    "--criterion",
    default="dead",
    show_default=True,
    help="dead | inactive | l1 | l2 | bn-scale | pfp | pfp-random | similarity",
)
@click.option("--calib", help="Calibration data (.npy for one input, .npz keyed by input name).")
@click.option("--plan", "plan_in", help="Apply this saved plan.json instead of a criterion.")
@click.option("--plan-out", help="Write the plan that was applied (plan.json).")
@click.option("--ratio", type=float, help="Remove this fraction of the prunable channels.")
@click.option("--flops-target", type=float, help="Keep this fraction of the FLOPs (MACs).")
@click.option("--max-layer-ratio", type=float, help="Remove at most this fraction of any one group.")
@click.option(
    "--min-channels", type=int, default=1, show_default=True, help="Keep at least this many per group."
)
@click.option(
    "--round-to",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Keep channel counts a multiple of N (8 suits FP16 tensor cores).",
)
@click.option("--protect", multiple=True, help="Group id or producer node name to leave alone (repeatable).")
@click.option(
    "--dead-threshold",
    type=FINITE_NON_NEGATIVE,
    default=1e-3,
    show_default=True,
    help="Also remove filters this small (relative norm, or |BN scale|); not exact, measured.",
)
@click.option("--input-shape", "input_shape", multiple=True, help="NAME:1x3x32x32 or 1,3,32,32.")
@click.option("--weights", help="State dict for an entry-point MODEL (loaded with weights_only=True).")
@click.option(
    "--keep-denormals",
    is_flag=True,
    help="Keep denormal float32 weights (by default they are set to zero: slow on x86, below float32's resolution).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def command(
    model: str,
    output: str,
    criterion: str,
    calib: str | None,
    plan_in: str | None,
    plan_out: str | None,
    ratio: float | None,
    flops_target: float | None,
    max_layer_ratio: float | None,
    min_channels: int,
    round_to: int,
    protect: tuple[str, ...],
    dead_threshold: float,
    input_shape: tuple[str, ...],
    weights: str | None,
    keep_denormals: bool,
    as_json: bool,
) -> None:
    """Prune MODEL (.onnx or package.module:factory) and write the compact ONNX to OUTPUT."""
    from deploysparse import api
    from deploysparse.output_guard import reads, refuse_overlap, writes

    if criterion != "dead":  # an unknown name fails before a model is exported or loaded
        from deploysparse.criteria import get_criterion

        get_criterion(criterion)
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
    budget = {
        "ratio": ratio,
        "flops_target": flops_target,
        "max_layer_ratio": max_layer_ratio,
        "min_channels": min_channels,
        "round_to": round_to,
        "protect": protect,
    }
    if criterion == "dead" and (ratio is not None or flops_target is not None):
        raise UsageError(
            "--ratio/--flops-target need a ranking criterion (l1, l2, bn-scale, pfp, similarity)"
        )
    if criterion == "dead":  # dead filters go whatever the budget; only the rounding applies
        budget = {"round_to": round_to}
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
            **{k: v for k, v in budget.items() if v is not None},
        )
        api.save_outputs(result, output, plan_out)
    summary = result.summary
    if as_json:
        echo_json(summary)
        return
    console = Console(stderr=False)
    console.print(
        f"{criterion}: removed {summary['channels_removed']} channels in "
        f"{sum(1 for g in summary['groups'] if g['removed'])} groups; params {summary['params_before']:,} -> "
        f"{summary['params_after']:,}; MACs {summary['flops_before']:,} -> {summary['flops_after']:,}"
    )
    if "output_change" in summary:
        change = summary["output_change"]
        console.print(f"output change on {change['samples']} samples: max abs {change['max_abs']:.3g}")
    flushed = summary.get("denormals_flushed") or {}
    if flushed.get("total"):
        from deploysparse.denormals import DenormalCount

        console.print(
            f"set {DenormalCount(flushed['tensors']).describe()} to zero (--keep-denormals keeps them)"
        )
    for w in summary["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
    console.print(f"wrote {output}" + (f" and {plan_out}" if plan_out else ""))


def _resolve(model: str, weights: str | None, shapes, workdir: str, calib: str | None):
    """(.onnx path, nn.Module or None) for MODEL; an entry point is exported first (needs the
    PyTorch extra) and its module kept so criteria read activations through forward hooks."""
    if model.lower().endswith(".onnx") and weights is None:
        return model, None
    from deploysparse.frontend.model_source import resolve_model

    calib_shape = None
    if calib and calib.endswith(".npy"):
        import numpy as np

        from deploysparse.errors import CalibrationError

        try:
            calib_shape = (1, *np.load(calib, mmap_mode="r").shape[1:])
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"{calib}: not a readable .npy array ({exc})") from exc
    shape = next(iter(shapes.values())) if shapes else None
    resolved = resolve_model(
        model, weights=weights, input_shape=shape, workdir=workdir, calib_shape=calib_shape
    )
    return str(resolved.onnx_path), resolved.module
