"""Measured latency speedup of pruned ResNet-50 and MobileNetV2 next to the FLOPs they keep.

Goal (issue: speedup): on ONNX Runtime CPU at batch 8, the measured speedup is at least 0.85 of the
FLOPs ratio, i.e. efficiency = speedup x FLOPs kept >= 0.85.

    PYTHONPATH=. python benchmarks/speedup.py [--size 224] [--targets 0.7,0.5] [--round-to 1,8]
        [--batches 1,8] [--warmup 3] [--iters 20] [--rounds 3] [--threads 2] [--sequential]
        [--backend onnxruntime|tensorrt] [--json out.json]

Both networks are built in code with seeded random weights (latency does not depend on the values),
exported with BatchNorm folded (what a deployment runs), pruned with the l1 criterion to each FLOPs
target (and each --round-to), and timed original and compact on the backend's runner (the one
`deploysparse bench` uses: ONNX Runtime CPU, ORT_ENABLE_ALL, --threads intra-op threads).

Timing is interleaved by default: one runner per variant, run after run in rotating order,
--rounds x --iters timed runs each after --warmup, reporting the median (p50) and the fastest run.
On a machine shared with other work the load changes between models by more than the effect being
measured; interleaving exposes original and compact to the same load. `--sequential` instead times
each model alone with `deploysparse.bench.benchmark` (--rounds times, best p50): use it on a quiet
machine.

`--backend tensorrt` builds FP16 engines (optimisation profile batch 1..max(--batches)) and times
them instead; it needs TensorRT and an NVIDIA GPU and stops with an error otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deploysparse import api
from deploysparse.atomic import write_text
from deploysparse.backends import get_backend
from deploysparse.backends.feeds import make_feeds
from deploysparse.bench import benchmark
from deploysparse.errors import DeploysparseError
from deploysparse.frontend.torch_export import export_onnx
from deploysparse.modelio import load_model, save_model
from deploysparse.zoo.mobilenet import mobilenet_v2
from deploysparse.zoo.resnet import resnet

GOAL = 0.85
MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "ResNet-50": lambda: resnet(50),
    "MobileNetV2": lambda: mobilenet_v2(),
}


@dataclass
class Variant:
    """One model file to time: the original or a compact one, with its cost relative to the original."""

    label: str
    onnx_path: Path
    flops_kept: float = 1.0
    params: int = 0
    artifact: Path | None = None
    p50_ms: dict[int, float] = field(default_factory=dict)
    min_ms: dict[int, float] = field(default_factory=dict)


def parse_list(text: str, kind: type) -> list:
    return [kind(item) for item in text.split(",") if item.strip()]


def prepare(name: str, size: int, targets: list[float], round_tos: list[int], folder: Path) -> list[Variant]:
    """Export the original and write one compact model per (FLOPs target, round-to)."""
    original = folder / f"{name}.onnx"
    export_onnx(MODELS[name]().eval(), torch.randn(1, 3, size, size), original, keep_bn=False)
    params = api.analyze(original).params
    variants = [Variant("original", original, 1.0, params)]
    for target in targets:
        for round_to in round_tos:
            result = api.prune(original, criterion="l1", flops_target=target, round_to=round_to)
            summary = result.summary
            compact = save_model(result.model, folder / f"{name}-{target}-r{round_to}.onnx")
            variants.append(
                Variant(
                    f"l1 {target:.0%} FLOPs, round_to={round_to}",
                    compact,
                    summary["flops_after"] / summary["flops_before"],
                    summary["params_after"],
                )
            )
    return variants


def build_engines(variants: list[Variant], backend: str, max_batch: int, folder: Path) -> None:
    """TensorRT runs engines: build one FP16 engine per variant; ONNX Runtime runs the .onnx as is."""
    if backend == "onnxruntime":
        for v in variants:
            v.artifact = v.onnx_path
        return
    engine = get_backend(backend)
    for v in variants:
        model = load_model(v.onnx_path)
        shapes = {}
        for tensor in model.graph.input:
            dims = tuple(d.dim_value for d in tensor.type.tensor_type.shape.dim[1:])
            shapes[tensor.name] = ((1, *dims), (max_batch, *dims), (max_batch, *dims))
        out = folder / f"{v.onnx_path.stem}-trt"
        v.artifact = engine.build(v.onnx_path, out, precision="fp16", shapes=shapes).artifact


def time_sequential(variants: list[Variant], args: argparse.Namespace) -> dict:
    """`deploysparse.bench.benchmark` on each model in turn, --rounds times; keep each model's best p50."""
    report = {}
    for _ in range(args.rounds):
        for v in variants:
            report = benchmark(
                v.artifact,
                backend=args.backend,
                batches=args.batches,
                warmup=args.warmup,
                iters=args.iters,
                threads=args.threads,
            ).to_json()
            for timing in report["results"]:
                batch = timing["batch"]
                v.p50_ms[batch] = min(timing["p50_ms"], v.p50_ms.get(batch, float("inf")))
    return {key: report[key] for key in ("backend", "version", "device", "threads")}


def time_interleaved(variants: list[Variant], args: argparse.Namespace) -> dict:
    """One runner per variant (the runners `bench` uses), timed run by run in rotating order.

    Each variant's k-th run happens within one round of the others' k-th runs, so a change in the
    machine's load hits original and compact alike instead of whichever was being timed then.
    """
    engine = get_backend(args.backend)
    rng = np.random.default_rng(0)
    with contextlib.ExitStack() as stack:
        runners = [
            stack.enter_context(engine.runner(v.artifact, threads=args.threads, spinning=False))
            for v in variants
        ]
        for batch in args.batches:
            feeds = make_feeds(runners[0].input_specs, batch=batch, seed=rng)
            for _ in range(args.warmup):
                for runner in runners:
                    runner.run(feeds)
            seconds = np.empty((len(runners), args.iters * args.rounds))
            for i in range(seconds.shape[1]):
                for j in np.roll(np.arange(len(runners)), i):
                    start = time.perf_counter()
                    runners[j].run(feeds)
                    seconds[j, i] = time.perf_counter() - start
            for v, row in zip(variants, seconds, strict=True):
                v.p50_ms[batch] = float(np.median(row)) * 1e3
                v.min_ms[batch] = float(row.min()) * 1e3
        threads = getattr(runners[0], "threads", None)
    return {
        "backend": engine.name,
        "version": engine.version(),
        "device": engine.device(),
        "threads": threads,
    }


def table(rows: list[tuple[str, list[Variant]]], batches: list[int], goal_batch: int) -> str:
    """Speedup and efficiency from the median (p50) run, and from the fastest run (min) when timed."""
    header = ["model", "variant", "FLOPs kept", "params (M)"]
    for b in batches:
        header += [f"b{b} p50 ms orig / compact", f"b{b} speedup p50 (min)", f"b{b} efficiency p50 (min)"]
    header.append(f"goal: b{goal_batch} efficiency p50 >= {GOAL}")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, variants in rows:
        original = variants[0]
        for v in variants:
            cells = [name, v.label, f"{v.flops_kept:.3f}", f"{v.params / 1e6:.2f}"]
            for b in batches:
                speedup = original.p50_ms[b] / v.p50_ms[b]
                fastest = original.min_ms[b] / v.min_ms[b] if b in v.min_ms else None
                cells += [
                    f"{original.p50_ms[b]:.1f} / {v.p50_ms[b]:.1f}",
                    f"{speedup:.2f}x" + (f" ({fastest:.2f}x)" if fastest else ""),
                    f"{speedup * v.flops_kept:.2f}" + (f" ({fastest * v.flops_kept:.2f})" if fastest else ""),
                ]
            if v is original:
                cells.append("")
            else:
                efficiency = original.p50_ms[goal_batch] / v.p50_ms[goal_batch] * v.flops_kept
                cells.append("yes" if efficiency >= GOAL else "no")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--targets", default="0.7,0.5", help="FLOPs targets (fraction kept)")
    parser.add_argument("--round-to", default="1,8,16", help="round_to values to compare (16: the default)")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "tensorrt"))
    parser.add_argument(
        "--sequential", action="store_true", help="time each model alone with deploysparse.bench.benchmark"
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    args.batches = parse_list(args.batches, int)
    names = parse_list(args.models, str)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    goal_batch = 8 if 8 in args.batches else max(args.batches)
    try:
        if args.backend == "tensorrt":
            get_backend("tensorrt").version()  # fails now, before minutes of export and pruning
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for name in names:
                variants = prepare(
                    name, args.size, parse_list(args.targets, float), parse_list(args.round_to, int), folder
                )
                build_engines(variants, args.backend, max(args.batches), folder)
                timer = time_sequential if args.sequential else time_interleaved
                runtime = timer(variants, args)
                rows.append((name, variants))
                print(f"{name}: timed", file=sys.stderr, flush=True)
    except DeploysparseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{runtime['backend']} {runtime['version']} on {runtime['device']}, threads={runtime['threads']}, "
        f"input {args.size}x{args.size}, warmup {args.warmup}, "
        + (
            f"best p50 of {args.rounds} sequential rounds"
            if args.sequential
            else f"{args.rounds * args.iters} interleaved runs each"
        )
    )
    print(table(rows, args.batches, goal_batch))
    if args.json:
        figures = {
            "runtime": runtime,
            "size": args.size,
            "rounds": args.rounds,
            "models": {
                name: [
                    {
                        "variant": v.label,
                        "flops_kept": v.flops_kept,
                        "params": v.params,
                        "p50_ms": {str(b): ms for b, ms in v.p50_ms.items()},
                        "min_ms": {str(b): ms for b, ms in v.min_ms.items()},
                    }
                    for v in variants
                ]
                for name, variants in rows
            },
        }
        write_text(args.json, json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
