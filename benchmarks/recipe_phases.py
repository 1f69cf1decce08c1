"""Where the time of `deploysparse run RECIPE` goes: one run under cProfile, its phases in a table.

    PYTHONPATH=. python benchmarks/recipe_phases.py --model MODEL.onnx [--shape 1x3x320x320]
        [--recipe x86-cpu-onnxruntime] [--samples 8] [--top 0] [--keep FOLDER]

The model is run with random calibration data of `--samples` samples at `--shape` (default: the
model's static dims with batch 1), as a new user with no data of their own would start. The run is
the CLI's, in this process, under cProfile; the table gives the cumulative wall time of each step
of `pipeline.steps.run_steps` (prune, the build, validation, the benchmark, the per-layer profile,
the report) and of the whole command. `--top N` also prints the N functions with the most
cumulative time, to find what a phase spends it on.

The issue that asked for it (22): the packaged x86 recipe on PaddleOCR's PP-OCRv4 detector at
320x320 (0.58 GMACs) took 680 s on 2 cores; the goal is under 2 minutes.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

# (label, module file, function): the steps of a run, in the order they happen.
PHASES = (
    ("prune (analysis, dead filters, surgery)", "pipeline/steps.py", "prune_with_recipe"),
    ("flushed original (denormals)", "pipeline/original.py", "_flushed_original"),
    ("time plan (the cost of one call)", "pipeline/time_box.py", "plan_measurement"),
    ("build", "backends/base.py", "build"),
    ("validate", "deploysparse/validate.py", "validate"),
    ("benchmark (repeated, interleaved)", "pipeline/speed.py", "_latency"),
    ("per-layer profile", "pipeline/speed.py", "_layers"),
    ("report.json and report.html", "report/__init__.py", "write_report"),
)


def sample_shape(model_path: Path, given: str | None) -> tuple[int, ...]:
    if given:
        return tuple(int(d) for d in given.lower().replace(",", "x").split("x"))
    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    value = next(v for v in model.graph.input if v.name not in initializers)
    dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
    if any(d <= 0 for d in dims[1:]):
        raise SystemExit(f"{model_path}: dynamic dims {dims}; give --shape")
    return (1, *dims[1:])


def phase_times(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of each phase's function (summed over its calls; 0 when never called)."""
    times = {label: 0.0 for label, _, _ in PHASES}
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():
        for label, module, name in PHASES:
            if function == name and filename.replace("\\", "/").endswith(module):
                times[label] += cumulative
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--shape", help="one sample's shape with the batch, e.g. 1x3x320x320")
    parser.add_argument("--recipe", default="x86-cpu-onnxruntime")
    parser.add_argument("--samples", type=int, default=8, help="random calibration samples")
    parser.add_argument("--input-shape", action="store_true", help="also pass --shape as run --input-shape")
    parser.add_argument("--top", type=int, default=0, help="print the N functions with most cumulative time")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the run's output")
    args = parser.parse_args(argv)

    from deploysparse.cli import main as cli

    shape = sample_shape(args.model, args.shape)
    with tempfile.TemporaryDirectory(prefix="recipe-phases-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        calib = folder / "calib.npy"
        np.save(
            calib, np.random.default_rng(0).standard_normal((args.samples, *shape[1:])).astype(np.float32)
        )
        argv_run = [
            "run",
            args.recipe,
            "--model",
            str(args.model),
            "--calib",
            str(calib),
            "-o",
            str(folder / "out"),
        ]
        if args.input_shape:
            argv_run += ["--input-shape", "x".join(map(str, shape))]
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        try:
            cli(argv_run)
        except SystemExit as exc:  # the CLI exits 1 when validation fails: the phases still count
            if exc.code not in (0, 1, None):
                raise
        finally:
            profiler.disable()
        total = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    print(f"{args.model.name} at {'x'.join(map(str, shape))}, recipe {args.recipe}: {total:.1f} s in all")
    print("| phase | s | share |")
    print("| --- | ---: | ---: |")
    for label, seconds in phase_times(stats).items():
        print(f"| {label} | {seconds:.1f} | {seconds / total:.0%} |")
    print(f"| the whole `run` | {total:.1f} | 100% |")
    if args.top:
        stats.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
