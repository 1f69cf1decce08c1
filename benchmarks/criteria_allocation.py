"""Which loses accuracy, the criterion or the global allocation? Each criterion under deploysparse's
global allocation and under a uniform schedule, at equal MACs, on digits-trained ResNet-50/MobileNetV2.

Issue 15's last goal asks for a better accuracy proxy than the uniform schedule at equal latency.
benchmarks/latency_budget.py found l1 under the global allocation behind Torch-Pruning's uniform L1;
this script separates the two causes. For every criterion and FLOPs target it prints:

- global: `prune --criterion C --flops-target T --round-to 16` (the default allocation: channels of
  every group ranked together by their mean-normalised scores);
- uniform: the same criterion's scores, every group keeping the same fraction of its channels
  (rounded to 16), that fraction searched for the MACs closest to the global row's;
- Torch-Pruning's uniform L1 at the global row's MACs (when torch_pruning is installed).

    PYTHONPATH=. python benchmarks/criteria_allocation.py [--models ResNet-50,MobileNetV2]
        [--criteria l1,l2,bn-scale,inactive,similarity] [--targets 0.7,0.5] [--calib 256] [--cache DIR]

Accuracy: validation accuracy of the compact nn.Module (deploysparse.torch.apply_plan on a BN-kept
32x32 export) after re-estimating its BatchNorm statistics on the training split, no gradient step
(benchmarks/_digits32.bn_reestimated_accuracy: without it every compact model reads chance). Data
criteria read the first --calib training images. No timing: the machine's load does not matter.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks._digits32 import (
    DEFAULT_CACHE,
    SIZE,
    Training,
    accuracy,
    bn_reestimated_accuracy,
    digits32,
    trained,
)
from benchmarks._tp_uniform import UniformL1
from benchmarks.latency_budget import EPOCHS, HAVE_TP, MODELS, ROUND_TO, uniform_at
from deploysparse import api
from deploysparse.atomic import write_text
from deploysparse.criteria import get_criterion
from deploysparse.criteria.base import CriterionContext
from deploysparse.frontend.torch_export import export_onnx
from deploysparse.graph.analysis import GraphAnalysis
from deploysparse.graph.cost import count_cost
from deploysparse.torch import apply_plan

DATA_FREE = ("l1", "l2", "bn-scale")


def criterion_scores(ga: GraphAnalysis, name: str, ctx: CriterionContext) -> dict[str, np.ndarray]:
    """The criterion's score of every channel of every prunable group."""
    criterion = get_criterion(name)
    return {g.id: np.asarray(criterion.score(g, ctx)) for g in ga.groups if g.prunable}


def run_model(name: str, args: argparse.Namespace, folder: Path) -> list[dict]:
    module = trained(name, MODELS[name], Training(args.epochs, args.train_subset), args.cache)
    onnx_path = export_onnx(module, torch.randn(1, 3, SIZE, SIZE), folder / f"{name}-bn.onnx")
    ga = api.analyze(onnx_path, time_denormals=False).graph
    full = count_cost(ga).macs
    calib = {ga.model.graph.input[0].name: digits32("train", args.calib)[0]}
    tp = UniformL1(module, torch.randn(1, 3, SIZE, SIZE), torch.randn(1, 3, SIZE, SIZE)) if HAVE_TP else None
    rows = [
        {"model": name, "variant": "original", "macs": 1.0, "accuracy": accuracy(module, *digits32("val"))}
    ]
    for target in args.targets:
        tp_done = False
        for criterion in args.criteria:
            data = None if criterion in DATA_FREE else calib
            result = api.prune(
                onnx_path, criterion=criterion, calib=data, flops_target=target, round_to=ROUND_TO
            )
            macs = result.summary["flops_after"] / result.summary["flops_before"]
            compact = apply_plan(module, api.prune(onnx_path, plan=result.plan))
            rows.append(
                {
                    "model": name,
                    "variant": f"{criterion}, global, {target:.0%} FLOPs",
                    "macs": macs,
                    "accuracy": bn_reestimated_accuracy(compact),
                }
            )
            scores = criterion_scores(ga, criterion, CriterionContext(ga, calib=data))
            plan = uniform_at(ga, macs, scores)
            uniform_macs = count_cost(ga, plan.keep).macs / full
            compact = apply_plan(module, api.prune(onnx_path, plan=plan))
            rows.append(
                {
                    "model": name,
                    "variant": f"{criterion}, uniform, at the MACs above",
                    "macs": uniform_macs,
                    "accuracy": bn_reestimated_accuracy(compact),
                }
            )
            if tp is not None and not tp_done:
                pruned, ratio = tp.at(macs)
                rows.append(
                    {
                        "model": name,
                        "variant": f"TP uniform L1 (ratio {ratio:.3f}) at {target:.0%} FLOPs",
                        "macs": tp.fractions[ratio],
                        "accuracy": bn_reestimated_accuracy(pruned),
                    }
                )
                tp_done = True
            print(f"{name} {criterion} {target}: done", file=sys.stderr, flush=True)
    for row in rows:
        row["full_macs"] = full
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--criteria", default="l1,l2,bn-scale,inactive,similarity")
    parser.add_argument("--targets", default="0.7,0.5")
    parser.add_argument("--calib", type=int, default=256, help="training images the data criteria read")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs on digits (cached)")
    parser.add_argument("--train-subset", type=int, help="train on the first N training images only")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="trained state_dicts")
    args = parser.parse_args(argv)
    args.criteria = args.criteria.split(",")
    args.targets = [float(t) for t in args.targets.split(",")]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += run_model(name, args, Path(tmp))
    print("| model | variant | MACs kept | val. acc. BN re-est. |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['macs']:.3f} | {r['accuracy']:.3f} |")
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
