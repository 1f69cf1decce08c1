"""Measured latency speedup of pruned ResNet-50 and MobileNetV2 next to the FLOPs they keep.

Goal (issue: speedup): on ONNX Runtime CPU at batch 8, the measured speedup is at least 0.85 of the
FLOPs ratio, i.e. efficiency = speedup x FLOPs kept >= 0.85.

    PYTHONPATH=. python benchmarks/speedup.py [--size 224] [--targets 0.7,0.5] [--round-to 1,8]
        [--batches 1,8] [--warmup 3] [--iters 20] [--rounds 3] [--threads 2]
        [--backend onnxruntime|tensorrt] [--json out.json]

Both networks are built in code with seeded random weights (latency does not depend on the values),
exported with BatchNorm folded (what a deployment runs), pruned with the l1 criterion to each FLOPs
target (and each --round-to), and timed original and compact with `deploysparse.bench.benchmark`.
The variants of one network are timed in turn, `--rounds` times over, and each figure is the lowest
of the rounds' p50s: on a machine shared with other work the least disturbed round is the closest to
the model's own latency, and interleaving exposes original and compact to the same load.

`--backend tensorrt` builds FP16 engines (optimisation profile batch 1..max(--batches)) and times
them instead; it needs TensorRT and an NVIDIA GPU and stops with an error otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deploysparse import api
from deploysparse.atomic import write_text
from deploysparse.backends import get_backend
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


def time_variants(variants: list[Variant], args: argparse.Namespace) -> dict:
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
                batch, p50 = timing["batch"], timing["p50_ms"]
                v.p50_ms[batch] = min(p50, v.p50_ms.get(batch, float("inf")))
    return {key: report[key] for key in ("backend", "version", "device", "threads", "warmup", "iters")}


def table(rows: list[tuple[str, list[Variant]]], batches: list[int], goal_batch: int) -> str:
    header = ["model", "variant", "FLOPs kept", "params (M)"]
    for b in batches:
        header += [f"b{b} orig ms", f"b{b} compact ms", f"b{b} speedup", f"b{b} efficiency"]
    header.append(f"goal (b{goal_batch} efficiency >= {GOAL})")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, variants in rows:
        original = variants[0]
        for v in variants:
            cells = [name, v.label, f"{v.flops_kept:.3f}", f"{v.params / 1e6:.2f}"]
            for b in batches:
                speedup = original.p50_ms[b] / v.p50_ms[b]
                cells += [
                    f"{original.p50_ms[b]:.2f}",
                    f"{v.p50_ms[b]:.2f}",
                    f"{speedup:.2f}x",
                    f"{speedup * v.flops_kept:.2f}",
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
    parser.add_argument("--round-to", default="1,8", help="round_to values to compare")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "tensorrt"))
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
                runtime = time_variants(variants, args)
                rows.append((name, variants))
                print(f"{name}: timed", file=sys.stderr, flush=True)
    except DeploysparseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{runtime['backend']} {runtime['version']} on {runtime['device']}, threads={runtime['threads']}, "
        f"input {args.size}x{args.size}, warmup {args.warmup}, iters {args.iters}, "
        f"best p50 of {args.rounds} rounds"
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
