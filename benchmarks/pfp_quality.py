"""Why PFP came last on the digits ResNet-20 at 50% FLOPs: small data, the allocation, or a defect?

    PYTHONPATH=. python benchmarks/pfp_quality.py [--resnet-epochs 6] [--target 0.5] [--json out.json]

The ResNet-20 of benchmarks/criteria.py (trained here on the digits, seeded) is pruned to --target of
its FLOPs (round_to 1, as in the earlier figures) five ways, each scored straight after pruning and
after one epoch of fine-tuning (the same seeded batches for all):
- l1: the reference;
- pfp, 32 points: the earlier setting (benchmarks/criteria.py --pfp-calib 32);
- pfp, |S| points: the number of points the paper's bound asks for (146 here: more data);
- pfp scores, global threshold: PFP's sensitivities (mean-normalised per group, like l1's norms)
  ranked by the budget search every other criterion uses, instead of PFP's one-eps allocation;
- l1 scores, PFP's allocation: PFP's per-group kept counts, filled with each group's highest-l1
  channels (the allocation with another ranking).
If the allocation is what hurts, the last two rows move in opposite directions.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.criteria import FINE_TUNE_LR, SEED, onnx_accuracy, resnet_subject, torch_accuracy, train
from deploysparse import api
from deploysparse.atomic import write_text
from deploysparse.budget import Budget
from deploysparse.criteria import CRITERIA, CriterionContext, plan_with
from deploysparse.criteria.base import normalise_by_mean
from deploysparse.criteria.pfp import calibration_points, group_sensitivity
from deploysparse.frontend.torch_export import export_onnx
from deploysparse.graph.analysis import analyze_graph
from deploysparse.modelio import load_model
from deploysparse.plan import Plan
from deploysparse.torch import apply_plan


@dataclass(frozen=True)
class PFPScores:
    """PFP's sensitivities as plain scores (no allocation of its own), mean-normalised per group."""

    points: int
    name: str = "pfp-scores"
    needs_data: bool = True

    def score(self, group, ctx):
        found = group_sensitivity(group, ctx, points=self.points)
        return None if found is None else normalise_by_mean(found.s)


def with_counts(ga, counts: dict[str, int], ctx: CriterionContext) -> Plan:
    """Each group keeps `counts[g]` channels, its highest-l1 ones."""
    keep = {}
    for gid, count in counts.items():
        scores = CRITERIA["l1"].score(ga.group(gid), ctx)
        keep[gid] = np.sort(np.argsort(-np.asarray(scores), kind="stable")[:count])
    return Plan(keep=keep, criterion="l1-in-pfp-counts")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resnet-epochs", type=int, default=6)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    subject = resnet_subject(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = export_onnx(
            subject.module, torch.from_numpy(subject.val[0][:1]), folder / "m.onnx", keep_bn=True
        )
        model = load_model(path)
        name = model.graph.input[0].name
        ga = analyze_graph(model, {name: [1, *subject.val[0].shape[1:]]})
        largest_s = calibration_points(16 * 16 * 16)  # largest consumer output: 16 filters x 16x16
        feeds = {name: subject.train[0][:256]}
        budget = Budget(flops_target=args.target, round_to=1)
        plans = {
            "l1": plan_with("l1", ga, CriterionContext(ga, calib=feeds), budget),
            "pfp, 32 points": plan_with(
                "pfp", ga, CriterionContext(ga, calib={name: feeds[name][:32]}), budget
            ),
            "pfp, |S| points": plan_with("pfp", ga, CriterionContext(ga, calib=feeds), budget),
            "pfp scores, global threshold": plan_with(
                PFPScores(largest_s), ga, CriterionContext(ga, calib=feeds), budget
            ),
        }
        counts = {gid: len(k) for gid, k in plans["pfp, |S| points"].keep.items()}
        plans["l1 scores, PFP's allocation"] = with_counts(ga, counts, CriterionContext(ga))
        for label, plan in plans.items():
            result = api.prune(path, plan=plan)
            s = result.summary
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SEED)
                tuned = train(apply_plan(subject.module, result.surgery), subject.train, 1, FINE_TUNE_LR)
            rows.append(
                {
                    "variant": label,
                    "flops_kept": s["flops_after"] / s["flops_before"],
                    "params_kept": s["params_after"] / s["params_before"],
                    "kept_per_group": {g["id"]: g["kept"] for g in s["groups"] if g["prunable"]},
                    "accuracy": onnx_accuracy(result.model, subject.val),
                    "fine_tuned": torch_accuracy(tuned, subject.val),
                }
            )
            print(f"{label}: done", file=sys.stderr, flush=True)
    print(
        f"ResNet-20 (digits), {args.resnet_epochs} epochs, FLOPs target {args.target}, round_to 1, |S| = {largest_s}"
    )
    print("| variant | FLOPs kept | params kept | accuracy | +1 epoch |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['variant']} | {r['flops_kept']:.3f} | {r['params_kept']:.3f} | {r['accuracy']:.2%} | "
            f"{r['fine_tuned']:.2%} |"
        )
    for r in rows:
        print(r["variant"], r["kept_per_group"])
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
