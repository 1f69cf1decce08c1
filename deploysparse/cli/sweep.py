"""`deploysparse sweep SWEEP.yaml -o OUTDIR [--ray auto|ADDRESS] [--resume]`: many recipe runs, one choice."""

from __future__ import annotations

import click


@click.command("sweep")
@click.argument("sweep_file", metavar="SWEEP.yaml")
@click.option(
    "-o", "--outdir", required=True, help="Output folder (points/, results.*, best.json, sweep.html)."
)
@click.option(
    "--ray",
    "ray_address",
    metavar="auto|ADDRESS",
    help="Run the points as Ray Tune trials: 'auto' joins a running Ray or starts a local one; "
    "ADDRESS joins that cluster. Needs `pip install deploysparse[scale]`.",
)
@click.option("--resume", is_flag=True, help="Continue the sweep in OUTDIR (error if there is none).")
def command(sweep_file: str, outdir: str, ray_address: str | None, resume: bool) -> None:
    """Prune, build, validate and benchmark every point of SWEEP.yaml; write best.json and sweep.html.

    Points already finished in OUTDIR (same model, data and settings, by content hash) are skipped.
    Exit code 1 when a point failed or no point meets the selection rule.
    """
    from deploysparse.sweep import load_sweep, run_sweep

    sweep = load_sweep(sweep_file)
    outcome = run_sweep(sweep, outdir, ray_address=ray_address, resume=resume)
    click.echo(
        f"{len(outcome.rows)} points ({outcome.ran} run now, {outcome.skipped} already done, "
        f"{len(outcome.failed)} failed): {outdir}/results.csv, {outdir}/sweep.html"
    )
    for note in outcome.notes:
        click.echo(f"note: {note}")
    if outcome.best is not None:
        click.echo(f"best: points/{outcome.best['key']} -> {outdir}/best.json")
    if outcome.failed or outcome.best is None:
        raise SystemExit(1)
