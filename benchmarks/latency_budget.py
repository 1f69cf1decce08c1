"""FLOPs and latency budgets on ResNet-50 and MobileNetV2 shapes, against Torch-Pruning's uniform L1.

Goal (issue 15): realised speedup >= 0.90 of the FLOPs ratio on ResNet-50 and >= 0.85 on MobileNetV2
at 50% FLOPs; predicted latency within 10% of measured; at equal MACs a better accuracy proxy than
the uniform schedule.

    PYTHONPATH=. python benchmarks/latency_budget.py [--size 224] [--batch 8] [--iters 10]
        [--rounds 2] [--models ResNet-50,MobileNetV2] [--criterion l1|l2|similarity|bn-scale]
        [--keep-bn] [--calib N] [--latency-targets 0.7,0.5] [--allocations threshold,knapsack]
        [--epochs 8]
        [--cache DIR] [--json out.json]

Networks: `deploysparse.zoo` ResNet-50 and MobileNetV2 with a 10-class head, trained on digits at
32x32 (benchmarks/_digits32.py; the state_dict is cached in --cache, so only the first run trains).
Latency is measured on the --size export (BatchNorm folded), the accuracy proxy on a 32x32 export of
the same weights: both networks end in global average pooling, so one set of weights serves both
sizes, and a plan found on the --size graph applies to the 32x32 graph (its group ids are the same:
checked).

Rows per network: l1 (or --criterion) at 70% and 50% of the FLOPs and at each --latency-targets
(default 0.5: `--latency-target 0.5 --backend onnxruntime --batch B`) with each --allocations
(`--latency-allocation`, default threshold), all with round_to 16 (passed explicitly); and for each of them
Torch-Pruning 1.6's uniform L1 (`MagnitudeImportance(p=1)`, `global_pruning=False`, `round_to=16`,
the classifier ignored) with its per-layer ratio searched for the closest MACs it reaches
(benchmarks/_tp_uniform.py): its counts move in steps of 16 in every layer at once, so it can land
several percent off (ResNet-50 near 50%, counted at 32x32: 0.449 or 0.568); stderr names the two steps around each target.
Without torch_pruning (the `bench` extra) the baseline falls back to deploysparse's own uniform L1
schedule, labelled as such.

Columns: MACs kept (deploysparse's counter on the exported graph, for every row); measured speedup
at batch B (p50 of interleaved runs: original and every compact model timed run by run in rotating
order, so the load of a shared machine hits all alike); realised = speedup x MACs kept (1.0 is the
physical bound); predicted latency vs measured here (the latency target's row: what prune predicted
before it timed the compact model, after its measured corrections; the other rows: the per-layer
table of deploysparse.latency), as a fraction of the original put on this run's clock, and the
fraction prune itself measured for the latency target (original and compact alone, alternating); the
accuracy proxy on the 180 validation digits, no fine-tuning: top-1 agreement with the original,
relative output error max|y - y0| / max|y0|, and validation accuracy (the original's is printed), all
three on the BN-folded compact ONNX; and the validation accuracy of the compact nn.Module (Torch-
Pruning's, or deploysparse.torch.apply_plan's on a BN-kept export) after re-estimating its BatchNorm
statistics on the training split (no gradient step). Without that, removing channels shifts every
downstream activation's statistics and these networks fall to chance accuracy at 70% of the MACs,
whichever channels went: the first three columns then say little; the last one separates plans.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks._digits32 import DEFAULT_CACHE, SIZE, Training, bn_reestimated_accuracy, digits32, trained
from benchmarks._tp_uniform import UniformL1
from benchmarks.speedup import Variant, time_interleaved
from deploysparse import api
from deploysparse.atomic import write_text
from deploysparse.backends import reference_backend
from deploysparse.budget import LATENCY_ALLOCATIONS, Budget
from deploysparse.calibration import model_input_specs
from deploysparse.criteria import CRITERIA, CriterionContext
from deploysparse.frontend.torch_export import export_onnx
from deploysparse.graph.analysis import GraphAnalysis
from deploysparse.graph.cost import count_cost
from deploysparse.latency import latency_model
from deploysparse.modelio import load_model, save_model
from deploysparse.plan import Plan
from deploysparse.torch import apply_plan
from deploysparse.zoo.mobilenet import mobilenet_v2
from deploysparse.zoo.resnet import resnet

GOALS = {"ResNet-50": 0.90, "MobileNetV2": 0.85}
MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "ResNet-50": lambda: resnet(50, num_classes=10),
    "MobileNetV2": lambda: mobilenet_v2(num_classes=10),
}
ROUND_TO = 16
EPOCHS = 8
HAVE_TP = importlib.util.find_spec("torch_pruning") is not None


def uniform_plan(
    ga: GraphAnalysis, fraction: float, scores: dict[str, np.ndarray] | None = None, round_to: int = ROUND_TO
) -> Plan:
    """Every prunable group keeps round_to-rounded `fraction` of its channels, its highest-scoring ones
    (`scores` per group id; by default their L1 norms)."""
    ctx = CriterionContext(ga)
    keep = {}
    for group in ga.groups:
        if not group.prunable or (scores is not None and group.id not in scores):
            continue
        count = max(round_to, round(fraction * group.size / round_to) * round_to)
        count = max(count, len(group.pinned_channels))
        if group.size < round_to or count >= group.size or group.block > 1:
            continue
        ranked = scores[group.id] if scores is not None else CRITERIA["l1"].score(group, ctx)
        ranked = np.array(ranked, dtype=np.float64)
        ranked[np.asarray(group.pinned_channels, dtype=np.int64)] = np.inf
        keep[group.id] = np.sort(np.argsort(-ranked, kind="stable")[:count])
    return Plan(keep=keep, criterion="uniform")


def uniform_at(ga: GraphAnalysis, macs_fraction: float, scores: dict[str, np.ndarray] | None = None) -> Plan:
    """The uniform plan whose MACs are closest to `macs_fraction` of the original (bisection): the
    baseline when Torch-Pruning is not installed, and any criterion's uniform schedule."""
    full = count_cost(ga).macs
    lo, hi = 0.05, 1.0
    for _ in range(20):
        mid = (lo + hi) / 2
        if count_cost(ga, uniform_plan(ga, mid, scores).keep).macs / full > macs_fraction:
            hi = mid
        else:
            lo = mid
    candidates = [uniform_plan(ga, f, scores) for f in (lo, hi)]
    return min(candidates, key=lambda p: abs(count_cost(ga, p.keep).macs / full - macs_fraction))


def group_signature(ga: GraphAnalysis) -> list[tuple[str, int, bool]]:
    """(id, size, prunable) of every group: equal for two exports exactly when a plan carries over."""
    return [(g.id, g.size, g.prunable) for g in ga.groups]


def counts_in(original: GraphAnalysis, compact: GraphAnalysis) -> dict[str, int] | None:
    """Kept count per group id of `original` for a compact export of the same module (Torch-Pruning's):
    groups matched by the Conv/Gemm nodes producing them (exported node names follow module names).
    None when some group of either graph has no partner: then no latency prediction is made."""
    producers = {frozenset(m.node for m in g.producers): g for g in compact.groups}
    counts = {}
    for group in original.groups:
        partner = producers.pop(frozenset(m.node for m in group.producers), None)
        if partner is None:
            return None
        if partner.size != group.size:
            counts[group.id] = partner.size
    return counts if not producers else None


def outputs(path: Path, images: np.ndarray) -> np.ndarray:
    """The model's first output on `images` in ONNX Runtime."""
    proto = load_model(path)
    feeds = {model_input_specs(proto)[0].name: images}
    return next(iter(reference_backend().intermediates(proto, feeds).values()))


def proxy(y0: np.ndarray, compact: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 agreement with the original's outputs y0, relative max output error, and accuracy."""
    y1 = outputs(compact, images)
    return {
        "agreement": float((y0.argmax(axis=1) == y1.argmax(axis=1)).mean()),
        "rel_error": float(np.abs(y1 - y0).max() / np.abs(y0).max()),
        "accuracy": float((y1.argmax(axis=1) == labels).mean()),
    }


def export(module: torch.nn.Module, size: int, path: Path) -> Path:
    """BatchNorm-folded export at size x size (dynamic batch): what a deployment runs."""
    return export_onnx(module.eval(), torch.randn(1, 3, size, size), path, keep_bn=False)


def run_model(name: str, args: argparse.Namespace, folder: Path) -> tuple[list[dict], float]:
    """Every row of one network, timed together; and the original's validation accuracy."""
    module = trained(name, MODELS[name], Training(args.epochs, args.train_subset, args.seed), args.cache)
    original = export(module, args.size, folder / f"{name}.onnx")
    original32 = export(module, SIZE, folder / f"{name}-{SIZE}.onnx")
    # BatchNorm kept (parameter names too): surgery on it replays on the module (apply_plan).
    original32_bn = export_onnx(module, torch.randn(1, 3, SIZE, SIZE), folder / f"{name}-{SIZE}-bn.onnx")
    # --keep-bn: deploysparse's rows prune a BN-kept export at --size (what the torch front end
    # and `optimize=False` give; ONNX Runtime folds BN when it loads it, so it times alike).
    source = (
        export_onnx(module, torch.randn(1, 3, args.size, args.size), folder / f"{name}-bn.onnx")
        if args.keep_bn
        else original
    )
    calib = None
    if args.calib:  # the first training images at --size (pixel repetition, as digits32 makes 32x32)
        images = digits32("train", args.calib)[0]
        factor = args.size // SIZE
        calib = images.repeat(factor, axis=2).repeat(factor, axis=3)
    ga = api.analyze(original, time_denormals=False).graph
    if calib is not None:
        calib = {ga.model.graph.input[0].name: calib}
    for other in (original32, original32_bn, source):
        if group_signature(api.analyze(other, time_denormals=False).graph) != group_signature(ga):
            raise RuntimeError(f"{name}: {other.name} groups channels unlike the {args.size} export")
    full = count_cost(ga).macs
    images, labels = digits32("val")
    y0 = outputs(original32, images)
    original_accuracy = float((y0.argmax(axis=1) == labels).mean())
    tp = None
    if HAVE_TP and not args.own_uniform:
        tp = UniformL1(module, torch.randn(1, 3, SIZE, SIZE), torch.randn(1, 3, args.size, args.size))
        if tp.full_macs != full:
            raise RuntimeError(f"{name}: MACs by module hooks {tp.full_macs} != on the graph {full}")
    started = time.perf_counter()
    model = latency_model(ga, Budget(latency_target=0.5, batch=args.batch, round_to=ROUND_TO))
    print(f"{name}: latency table in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    rows: list[dict] = []
    variants = [Variant("original", original)]

    def add(
        label: str,
        path: Path,
        path32: Path,
        macs: float,
        counts: dict[str, int] | None,
        predicted: float | None = None,
        **extra,
    ) -> None:
        """predicted: the fraction of the original's latency prune predicted (a latency target's,
        made before the compact model was timed); else the table's prediction for `counts`."""
        variants.append(Variant(label, path, macs))
        if predicted is None and counts is not None:
            predicted = model.predict(counts) / model.predict({})
        rows.append({"label": label, "macs": macs, "predicted": predicted, "path32": path32, **extra})

    def on_digits(plan: Plan, stem: Path) -> tuple[Path, float]:
        """The plan on the 32x32 exports: the folded compact ONNX (for the proxy), and the accuracy
        of the compact module with BatchNorm statistics re-estimated."""
        path32 = save_model(api.prune(original32, plan=plan).model, Path(f"{stem}-{SIZE}.onnx"))
        compact = apply_plan(module, api.prune(original32_bn, plan=plan))
        with torch.no_grad():
            y_module = compact.eval()(torch.from_numpy(images)).numpy()
        y_onnx = outputs(path32, images)
        # Same network both ways: BN folding only reorders float32 arithmetic (errors ~1e-6 relative).
        if np.abs(y_module - y_onnx).max() > 1e-3 * np.abs(y_onnx).max():
            raise RuntimeError(f"{name}: the compact module and the compact ONNX disagree ({stem.name})")
        return path32, bn_reestimated_accuracy(compact)

    budgets = [
        (f"{args.criterion} 70% FLOPs", {"flops_target": 0.7}),
        (f"{args.criterion} 50% FLOPs", {"flops_target": 0.5}),
    ]
    budgets += [
        (
            f"{args.criterion} {target:.0%} latency, {allocation}",
            {"latency_target": target, "batch": args.batch, "latency_allocation": allocation},
        )
        for target in args.latency_targets
        for allocation in args.allocations
    ]
    for label, budget in budgets:
        started = time.perf_counter()
        result = api.prune(source, criterion=args.criterion, calib=calib, round_to=ROUND_TO, **budget)
        seconds = time.perf_counter() - started
        macs = result.summary["flops_after"] / result.summary["flops_before"]
        stem = folder / f"{name}-{len(variants)}"
        path = save_model(result.model, stem.with_suffix(".onnx"))
        path32, bn_accuracy = on_digits(result.plan, stem)
        counts = {gid: len(k) for gid, k in result.plan.keep.items()}
        latency = result.summary.get("latency")
        predicted = latency["predicted_ms"] / latency["predicted_original_ms"] if latency else None
        add(
            label,
            path,
            path32,
            macs,
            counts,
            predicted,
            prune_s=seconds,
            bn_accuracy=bn_accuracy,
            prune_measured=latency["measured_fraction"] if latency else None,
        )

        stem = folder / f"{name}-{len(variants)}-uniform"
        if tp is not None:
            started = time.perf_counter()
            pruned, ratio = tp.at(macs)
            seconds = time.perf_counter() - started
            steps = " and ".join("none" if f is None else f"{f:.3f}" for f in tp.bracket(macs))
            print(
                f"{name}: Torch-Pruning uniform around {macs:.3f} of the MACs: steps at {steps} "
                f"(hook count at {args.size}x{args.size}), {len(tp.fractions)} ratios tried in {seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            path = export(pruned, args.size, stem.with_suffix(".onnx"))
            path32 = export(pruned, SIZE, Path(f"{stem}-{SIZE}.onnx"))
            compact = api.analyze(path, time_denormals=False).graph
            add(
                f"TP uniform L1 (ratio {ratio:.3f}) at {label}'s MACs",
                path,
                path32,
                count_cost(compact).macs / full,
                counts_in(ga, compact),
                prune_s=seconds,
                bn_accuracy=bn_reestimated_accuracy(pruned),
            )
        else:
            uniform = uniform_at(ga, macs)
            surgery = api.prune(original, plan=uniform)
            path = save_model(surgery.model, stem.with_suffix(".onnx"))
            path32, bn_accuracy = on_digits(uniform, stem)
            add(
                f"our uniform L1 (no torch_pruning) at {label}'s MACs",
                path,
                path32,
                surgery.summary["flops_after"] / surgery.summary["flops_before"],
                {gid: len(k) for gid, k in uniform.keep.items()},
                bn_accuracy=bn_accuracy,
            )
    args.batches = [args.batch]
    for variant in variants:
        variant.artifact = variant.onnx_path  # ONNX Runtime runs the .onnx as is
    runtime = time_interleaved(variants, args)
    base = variants[0].p50_ms[args.batch]
    for row, variant in zip(rows, variants[1:], strict=True):
        speedup = base / variant.p50_ms[args.batch]
        row.update(
            model=name,
            original_ms=base,
            measured_ms=variant.p50_ms[args.batch],
            speedup=speedup,
            realised=speedup * row["macs"],
            runtime=runtime,
            **proxy(y0, row.pop("path32"), images, labels),
        )
    return rows, original_accuracy


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
        "prune's own measurement",
        "top-1 agree",
        "rel. output error",
        "val. accuracy",
        "val. acc. BN re-est.",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        if r["predicted"] is None:
            predicted, error = "n/a", "n/a"
        else:
            scaled = r["predicted"] * r["original_ms"]  # the predicted fraction on the interleaved clock
            predicted, error = f"{scaled:.1f}", f"{scaled / r['measured_ms'] - 1:+.0%}"
        cells = [
            r["model"],
            r["label"],
            f"{r['macs']:.3f}",
            f"{r['original_ms']:.1f} / {r['measured_ms']:.1f}",
            f"{r['speedup']:.2f}x",
            f"{r['realised']:.2f}",
            f"{predicted} / {r['measured_ms']:.1f}",
            error,
            f"{r['prune_measured']:.2f} of the original" if r.get("prune_measured") else "",
            f"{r['agreement']:.3f}",
            f"{r['rel_error']:.3f}",
            f"{r['accuracy']:.3f}",
            f"{r['bn_accuracy']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fractions(text: str) -> list[float]:
    """--latency-targets: comma-separated fractions in (0, 1]."""
    values = [float(part) for part in text.split(",")]
    if not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text}: each must be in (0, 1]")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--criterion",
        default="l1",
        choices=("l1", "l2", "similarity", "bn-scale"),
        help="deploysparse's criterion for its rows (bn-scale needs --keep-bn; similarity reads --calib images)",
    )
    parser.add_argument(
        "--calib",
        type=int,
        default=0,
        help="calibration images for deploysparse's criterion (similarity then compares activations)",
    )
    parser.add_argument(
        "--keep-bn",
        action="store_true",
        help="deploysparse's rows prune a BatchNorm-kept export (the criterion reads unfolded weights)",
    )
    parser.add_argument(
        "--latency-targets",
        type=fractions,
        default=[0.5],
        help="comma-separated --latency-target rows (each with every --allocations)",
    )
    parser.add_argument(
        "--allocations",
        type=lambda text: text.split(","),
        default=["threshold"],
        help=f"comma-separated --latency-allocation values, of {', '.join(LATENCY_ALLOCATIONS)}",
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs on digits (cached)")
    parser.add_argument("--train-subset", type=int, help="train on the first N training images only")
    parser.add_argument(
        "--seed", type=int, default=0, help="training seed: another seed, other trained weights"
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="trained state_dicts")
    parser.add_argument(
        "--own-uniform",
        action="store_true",
        help="deploysparse's uniform L1 as the baseline, not Torch-Pruning's",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.calib and args.size % SIZE:
        parser.error(f"--calib needs a --size that is a multiple of {SIZE}")
    if not set(args.allocations) <= set(LATENCY_ALLOCATIONS):
        parser.error(f"--allocations: each of {', '.join(LATENCY_ALLOCATIONS)}")
    if args.criterion == "bn-scale" and not args.keep_bn:
        parser.error("--criterion bn-scale reads BatchNorm scales: add --keep-bn")
    args.backend = "onnxruntime"
    rows: list[dict] = []
    accuracies: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model_rows, accuracies[name] = run_model(name, args, Path(tmp))
            rows += model_rows
    runtime = rows[0]["runtime"]
    print(
        f"{runtime['backend']} {runtime['version']} on {runtime['device']}, input {args.size}x{args.size}, "
        f"batch {args.batch}, {args.rounds * args.iters} interleaved runs each; accuracy proxy on "
        f"{SIZE}x{SIZE} digits (validation split)"
    )
    for name, accuracy in accuracies.items():
        print(f"{name}: original validation accuracy {accuracy:.3f} ({args.epochs} epochs, seed {args.seed})")
    print(table(rows, args.batch))
    for name, goal in GOALS.items():
        hit = [r for r in rows if r["model"] == name and r["label"] == f"{args.criterion} 50% FLOPs"]
        if hit:
            verdict = "met" if hit[0]["realised"] >= goal else "not met"
            print(f"goal {name}: realised >= {goal} at 50% FLOPs: {hit[0]['realised']:.2f} ({verdict})")
    if args.json:
        write_text(args.json, json.dumps({"accuracy": accuracies, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
