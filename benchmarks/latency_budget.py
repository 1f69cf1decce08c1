"""FLOPs and latency budgets on ResNet-50 and MobileNetV2 shapes, against a uniform L1 schedule.

Goal (issue 15): with the defaults (no flag a user must know: round_to 8), realised speedup >= 0.90
of the FLOPs ratio on ResNet-50 and >= 0.85 on MobileNetV2 at 50% FLOPs; predicted latency within
10% of measured; at equal MACs a better accuracy proxy than the uniform schedule.

    PYTHONPATH=. python benchmarks/latency_budget.py [--size 224] [--batch 8] [--iters 10]
        [--rounds 2] [--models ResNet-50,MobileNetV2] [--json out.json]

For each model (seeded random weights, BatchNorm folded, `deploysparse.zoo`): l1 at 70% and 50% of
the FLOPs and at a 50% latency target (`--latency-target 0.5 --backend onnxruntime --batch B`), all
with the default round_to 8; and for each of them a *uniform* L1 schedule (every prunable group
keeps the same fraction of its channels, rounded to 8, its highest-L1 channels; the fraction found
by bisection so that the MACs match). The uniform schedule is ours, not Torch-Pruning's:
torch-pruning is not installed here (the `bench` extra has it for benchmarks/compare_torch_pruning.py).

Columns: MACs kept; measured speedup at batch B (p50 of interleaved runs: original and every compact
model timed run by run in rotating order, so the load of a shared machine hits all alike); realised
= speedup x MACs kept (1.0 is the physical bound); predicted latency (the per-layer table of
deploysparse.latency) vs measured; accuracy proxy on 64 random calibration inputs: top-1 agreement
with the original and the relative output error max|y - y0| / max|y0|.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.speedup import MODELS, Variant, time_interleaved
from deploysparse import api
from deploysparse.atomic import write_text
from deploysparse.budget import Budget
from deploysparse.criteria import CRITERIA, CriterionContext
from deploysparse.frontend.torch_export import export_onnx
from deploysparse.graph.cost import count_cost
from deploysparse.latency import latency_model
from deploysparse.modelio import load_model, save_model
from deploysparse.ort_intermediates import run_batched, session
from deploysparse.plan import Plan

GOALS = {"ResNet-50": 0.90, "MobileNetV2": 0.85}


def uniform_plan(ga, fraction: float, round_to: int = 8) -> Plan:
    """Every prunable group keeps round_to-rounded `fraction` of its channels, its highest-L1 ones."""
    ctx = CriterionContext(ga)
    keep = {}
    for group in ga.groups:
        if not group.prunable:
            continue
        count = max(round_to, round(fraction * group.size / round_to) * round_to)
        count = max(count, len(group.pinned_channels))
        if group.size < round_to or count >= group.size or group.block > 1:
            continue
        scores = np.asarray(CRITERIA["l1"].score(group, ctx), dtype=np.float64)
        scores[np.asarray(group.pinned_channels, dtype=np.int64)] = np.inf
        keep[group.id] = np.sort(np.argsort(-scores, kind="stable")[:count])
    return Plan(keep=keep, criterion="uniform-l1")


def uniform_at(ga, macs_fraction: float) -> Plan:
    """The uniform plan whose MACs are closest to `macs_fraction` of the original (bisection)."""
    full = count_cost(ga).macs
    lo, hi = 0.05, 1.0
    for _ in range(20):
        mid = (lo + hi) / 2
        if count_cost(ga, uniform_plan(ga, mid).keep).macs / full > macs_fraction:
            hi = mid
        else:
            lo = mid
    candidates = [uniform_plan(ga, f) for f in (lo, hi)]
    return min(candidates, key=lambda p: abs(count_cost(ga, p.keep).macs / full - macs_fraction))


def proxy(original: Path, compact: Path, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
    """(top-1 agreement, relative max output error) of compact vs original on the feeds."""
    y0 = next(iter(run_batched(session(load_model(original)), feeds, None).values()))
    y1 = next(iter(run_batched(session(load_model(compact)), feeds, None).values()))
    agreement = float((y0.argmax(axis=1) == y1.argmax(axis=1)).mean())
    return agreement, float(np.abs(y1 - y0).max() / np.abs(y0).max())


def run_model(name: str, args: argparse.Namespace, folder: Path) -> list[dict]:
    original = folder / f"{name}.onnx"
    export_onnx(MODELS[name]().eval(), torch.randn(1, 3, args.size, args.size), original, keep_bn=False)
    feeds = {
        "input": np.random.default_rng(1).standard_normal((64, 3, args.size, args.size)).astype(np.float32)
    }
    feeds = {session(load_model(original)).get_inputs()[0].name: feeds["input"]}
    analysis = api.analyze(original)
    ga = analysis.graph
    started = time.perf_counter()
    model = latency_model(ga, Budget(latency_target=0.5, batch=args.batch))
    print(f"{name}: latency table in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    rows: list[dict] = []
    variants = [Variant("original", original)]
    for label, budget in (
        ("l1 70% FLOPs", {"flops_target": 0.7}),
        ("l1 50% FLOPs", {"flops_target": 0.5}),
        ("l1 50% latency", {"latency_target": 0.5, "batch": args.batch}),
    ):
        started = time.perf_counter()
        result = api.prune(original, criterion="l1", **budget)
        seconds = time.perf_counter() - started
        macs = result.summary["flops_after"] / result.summary["flops_before"]
        path = save_model(result.model, folder / f"{name}-{len(variants)}.onnx")
        counts = {gid: len(k) for gid, k in result.plan.keep.items()}
        variants.append(Variant(label, path, macs))
        rows.append({"label": label, "macs": macs, "predicted_ms": model.predict(counts), "prune_s": seconds})
        uniform = uniform_at(ga, macs)
        surgery = api.prune(original, plan=uniform)
        u_macs = surgery.summary["flops_after"] / surgery.summary["flops_before"]
        u_path = save_model(surgery.model, folder / f"{name}-{len(variants)}-uniform.onnx")
        u_counts = {gid: len(k) for gid, k in uniform.keep.items()}
        variants.append(Variant(f"uniform L1 at {label}'s MACs", u_path, u_macs))
        rows.append({"label": variants[-1].label, "macs": u_macs, "predicted_ms": model.predict(u_counts)})
    args.batches = [args.batch]
    for variant in variants:
        variant.artifact = variant.onnx_path  # ONNX Runtime runs the .onnx as is
    runtime = time_interleaved(variants, args)
    base = variants[0].p50_ms[args.batch]
    for row, variant in zip(rows, variants[1:], strict=True):
        speedup = base / variant.p50_ms[args.batch]
        agreement, error = proxy(original, variant.onnx_path, feeds)
        row.update(
            model=name,
            original_ms=base,
            measured_ms=variant.p50_ms[args.batch],
            speedup=speedup,
            realised=speedup * row["macs"],
            predicted_original_ms=model.predict({}),
            agreement=agreement,
            rel_error=error,
            runtime=runtime,
        )
    return rows


def table(rows: list[dict], batch: int) -> str:
    header = [
        "model",
        "variant",
        "MACs kept",
        f"b{batch} p50 ms orig / compact",
        "speedup",
        "realised",
        "predicted / measured ms",
        "pred. error",
        "top-1 agree",
        "rel. output error",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        predicted = r["predicted_ms"] * r["original_ms"] / r["predicted_original_ms"]  # same clock
        lines.append(
            "| "
            + " | ".join(
                [
                    r["model"],
                    r["label"],
                    f"{r['macs']:.3f}",
                    f"{r['original_ms']:.1f} / {r['measured_ms']:.1f}",
                    f"{r['speedup']:.2f}x",
                    f"{r['realised']:.2f}",
                    f"{predicted:.1f} / {r['measured_ms']:.1f}",
                    f"{predicted / r['measured_ms'] - 1:+.0%}",
                    f"{r['agreement']:.3f}",
                    f"{r['rel_error']:.3f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.backend = "onnxruntime"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += run_model(name, args, Path(tmp))
    print(
        f"{rows[0]['runtime']['backend']} {rows[0]['runtime']['version']} on {rows[0]['runtime']['device']}, "
        f"input {args.size}x{args.size}, batch {args.batch}, {args.rounds * args.iters} interleaved runs each"
    )
    print(table(rows, args.batch))
    for name, goal in GOALS.items():
        hit = [r for r in rows if r["model"] == name and r["label"] == "l1 50% FLOPs"]
        if hit:
            verdict = "met" if hit[0]["realised"] >= goal else "not met"
            print(f"goal {name}: realised >= {goal} at 50% FLOPs: {hit[0]['realised']:.2f} ({verdict})")
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
