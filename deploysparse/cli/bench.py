"""`deploysparse bench`: latency percentiles and throughput per batch size."""

from __future__ import annotations

import json
from pathlib import Path

import click

from deploysparse import progress


def _batch_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers like 1,8,32, got {value!r}") from exc
    if not sizes or any(b < 1 for b in sizes):
        raise click.BadParameter(f"expected positive batch sizes like 1,8,32, got {value!r}")
    return sizes


@click.command("bench")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True
)
@click.option(
    "--batch",
    "batch_sizes",
    default="1",
    show_default=True,
    callback=_batch_list,
    help="Batch sizes, e.g. 1,8.",
)
@click.option(
    "--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed runs per batch size."
)
@click.option(
    "--iters", type=click.IntRange(min=1), default=100, show_default=True, help="Timed runs per batch size."
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Intra-op threads (ONNX Runtime); default: all usable cores.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def command(model, backend, batch_sizes, warmup, iters, threads, as_json, quiet):
    """Time MODEL (an .onnx, or an engine for tensorrt) on random inputs after warm-up."""
    from deploysparse.bench import benchmark

    progress.set_quiet(quiet or as_json)
    report = benchmark(
        model, backend=backend, batches=batch_sizes, warmup=warmup, iters=iters, threads=threads
    )
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return 0
    click.echo(
        f"{report.model}: {report.backend} {report.version} on {report.device}, threads {report.threads}"
    )
    click.echo(f"{'batch':>6} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'samples/s':>11}")
    for r in report.results:
        click.echo(
            f"{r.batch:>6} {r.p50_ms:>9.3f} {r.p90_ms:>9.3f} {r.p99_ms:>9.3f} {r.throughput_per_s:>11.1f}"
        )
    return 0
