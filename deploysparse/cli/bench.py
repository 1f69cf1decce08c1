"""`deploysparse bench`: latency percentiles and throughput per batch size."""

from __future__ import annotations

import json
from pathlib import Path

import click

from deploysparse import progress
from deploysparse.cli.options import (
    backend_option,
    count_option,
    input_shape_option,
    json_quiet_options,
    parse_input_shapes,
    require_profiler,
)


def _batch_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers like 1,8,32, got {value!r}") from exc
    if not sizes or any(b < 1 for b in sizes):
        raise click.BadParameter(f"expected positive batch sizes like 1,8,32, got {value!r}")
    return sizes


@click.command("bench")
@click.argument("model", type=click.Path(path_type=Path))
@backend_option("Runs MODEL (an .onnx, or the artifact `build` wrote for the backend).")
@click.option(
    "--batch",
    "batch_sizes",
    callback=_batch_list,
    help="Batch sizes, e.g. 1,8 (default: the batch of --input-shape, else 1). A size the model cannot "
    "take (a static batch) is skipped, and the output says so.",
)
@input_shape_option("Shape to feed each input at (a model with dynamic height or width needs one).")
@count_option(
    "--warmup",
    default=10,
    minimum=0,
    help_text="Untimed runs per batch size, at least: more until the runs stop getting faster (0: none).",
)
@count_option("--iters", default=100, help_text="Timed runs per batch size.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Intra-op threads (ONNX Runtime); default: all usable cores.",
)
@click.option(
    "--per-layer",
    is_flag=True,
    help="Also profile each node with the backend's profiler (ONNX Runtime's: median ms per run, per batch size).",
)
@count_option("--top", default=20, minimum=0, help_text="Nodes shown by --per-layer (0: all).")
@json_quiet_options("the report")
def command(model, backend, batch_sizes, input_shape, warmup, iters, threads, per_layer, top, as_json, quiet):
    """Time MODEL (an .onnx, or an engine for tensorrt) on random inputs after warm-up."""
    from deploysparse.bench import benchmark

    if per_layer:
        require_profiler(backend)
    progress.set_quiet(quiet or as_json)
    report = benchmark(
        model,
        backend=backend,
        batches=batch_sizes,
        warmup=warmup,
        iters=iters,
        threads=threads,
        input_shapes=parse_input_shapes(input_shape),
    )
    profiles = []
    if per_layer:
        from deploysparse.profiling import profile_layers

        with progress.progress("profiling layers", total=len(report.results)) as advance:
            for timing in report.results:
                profiles.append(
                    profile_layers(
                        model,
                        timing.batch,
                        warmup=warmup,
                        runs=iters,
                        threads=threads,
                        backend=backend,
                        shapes=report.shapes.shapes,
                    )
                )
                advance(1)
    if as_json:
        data = report.to_json()
        if per_layer:
            data["per_layer"] = [p.to_json() for p in profiles]
        click.echo(json.dumps(data, indent=2))
        return 0
    click.echo(
        f"{report.model}: {report.backend} {report.version} on {report.device}, threads {report.threads}"
    )
    click.echo(f"inputs: {report.shapes.describe()}")
    for skipped in report.skipped:
        click.echo(f"skipped batch {skipped.batch}: {skipped.reason}")
    click.echo(f"{'batch':>6} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'samples/s':>11}")
    for r in report.results:
        click.echo(
            f"{r.batch:>6} {r.p50_ms:>9.3f} {r.p90_ms:>9.3f} {r.p99_ms:>9.3f} {r.throughput_per_s:>11.1f}"
        )
    for profile in profiles:
        _print_layers(profile, top)
    return 0


def _print_layers(profile, top: int) -> None:
    shown = profile.layers if top <= 0 else profile.layers[:top]
    click.echo(
        f"\nper layer, batch {profile.batch}: median ms per run over {profile.runs} runs "
        f"(ONNX Runtime profiler; nodes of the optimised graph), total {profile.total_ms:.3f} ms"
    )
    width = max([4, *(len(t.node) for t in shown)])
    click.echo(f"{'node':<{width}} {'op':<16} {'ms':>9} {'share':>7}")
    for t in shown:
        click.echo(f"{t.node:<{width}} {t.op:<16} {t.ms:>9.3f} {t.share:>7.1%}")
    if len(shown) < len(profile.layers):
        click.echo(f"({len(profile.layers) - len(shown)} more nodes; --top 0 shows all)")
