"""`deploysparse analyze MODEL`: channel groups, pinned spaces, FLOPs/params and dead filters."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from deploysparse.cli.options import analysis_options, echo_json, parse_input_shapes


@click.command("analyze")
@click.argument("model")
@analysis_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(
    model: str, calib: str | None, input_shape: tuple[str, ...], dead_threshold: float, as_json: bool
) -> None:
    """Show the channel groups of MODEL (.onnx), what pins them, its cost and its dead filters."""
    from deploysparse import api

    shapes = parse_input_shapes(input_shape)
    analysis = api.analyze(model, calib=calib, input_shapes=shapes, dead_threshold=dead_threshold)
    data = analysis.to_json()
    if as_json:
        echo_json(data)
        return
    console = Console()
    table = Table(title=f"channel groups of {model}")
    for col in ("group", "producers", "channels", "dead", "prunable", "consumers"):
        table.add_column(col)
    for g in data["groups"]:
        table.add_row(
            g["id"],
            ", ".join(g["producers"][:3]) + (" …" if len(g["producers"]) > 3 else ""),
            str(g["channels"]),
            str(g["dead"]),
            "yes" if g["prunable"] else f"pinned ({g['pinned_channels']})",
            str(len(g["consumers"])),
        )
    console.print(table)
    for p in data["pinned"]:
        console.print(f"pinned: {p['group']} by {p['op']} {p['node']}: {p['reason']}")
    console.print(f"inputs: {analysis.shapes.describe()}")
    console.print(
        f"params {data['params']:,}  MACs {data['flops']:,}  dead filters {data['dead_total']}  "
        f"groups {len(data['groups'])} ({data['prunable_groups']} prunable)"
    )
    if analysis.denormals.total:
        console.print(f"[yellow]denormals:[/yellow] {analysis.denormals.describe()}")
        cost = analysis.denormal_cost
        if cost is not None:
            console.print(
                f"  on this CPU (ONNX Runtime, batch {cost.batch}, {cost.runs} runs each, interleaved): "
                f"{cost.as_is_ms:.3f} ms as is, {cost.flushed_ms:.3f} ms flushed ({cost.slowdown:.2f}x); "
                "prune and build set them to zero unless --keep-denormals"
            )
    for w in data["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
