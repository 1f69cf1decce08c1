"""Pruning criteria on models built in the repo: planning time, and accuracy against FLOPs kept.

    PYTHONPATH=. python benchmarks/criteria.py [timing]
    PYTHONPATH=. python benchmarks/criteria.py accuracy [--models digits,resnet20] [--targets 0.9,0.7,0.5,0.3]
        [--calib 64] [--pfp-calib 32] [--resnet-epochs 6] [--json out.json]

timing: each criterion's plan (scores + budget search) on CIFAR ResNet-20 with 32 calibration
images. Weights are the seeded initialisation (timing only; no accuracy is claimed).

accuracy (issue: criteria accuracy): validation accuracy of the compact model against the FLOPs it
keeps, for every criterion at every FLOPs target, straight after pruning (the compact ONNX on ONNX
Runtime) and after one epoch of fine-tuning (`deploysparse.torch.apply_plan` on the nn.Module, Adam
lr 1e-4, batch 32, the digits training split). Goals: `dead` loses nothing; at 50% FLOPs `pfp` and
`similarity` keep at least as much accuracy as `l1`. Models:
- digits: the bundled trained digits VGG (`deploysparse.zoo.digits.digits_model()`), 1x16x16;
- resnet20: CIFAR ResNet-20 (`deploysparse.zoo.resnet.cifar_resnet(20)`) trained here for
  --resnet-epochs epochs (Adam lr 1e-3, batch 32, seeded) on the same digits, the grey channel
  repeated to 3 channels at 16x16 (a ResNet-20 accepts any size divisible by 4).
Both are exported with BatchNorm kept, so `bn-scale` has its evidence and `apply_plan` can map names.
Calibration data is the first --calib training images; PFP gets only the first --pfp-calib of them,
because its sensitivities cost O(filters x channels x kernel x positions) per image.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deploysparse import api
from deploysparse.atomic import write_text
from deploysparse.backends import reference_backend
from deploysparse.budget import Budget
from deploysparse.calibration import model_input_specs
from deploysparse.criteria import CRITERIA, CriterionContext, plan_with
from deploysparse.frontend.torch_export import export_onnx
from deploysparse.graph.analysis import analyze_graph
from deploysparse.modelio import load_model
from deploysparse.torch import apply_plan
from deploysparse.zoo.digits import digits_model, load_digits_data, validation_set
from deploysparse.zoo.resnet import cifar_resnet

ACCURACY_CRITERIA = ("l1", "l2", "bn-scale", "pfp", "similarity")
FINE_TUNE_LR = 1e-4
BATCH = 32
SEED = 0


def timing() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(cifar_resnet(20).eval(), torch.randn(1, 3, 32, 32), Path(folder) / "r20.onnx")
        model = load_model(path)
    ga = analyze_graph(model)
    feeds = {
        model.graph.input[0].name: np.random.default_rng(0).normal(size=(32, 3, 32, 32)).astype(np.float32)
    }
    print(f"{'criterion':12s} {'--ratio 0.3':>12s} {'--flops-target 0.5':>19s}")
    for name in sorted(CRITERIA):
        times = []
        for budget in ({"ratio": 0.3}, {"flops_target": 0.5}):
            start = time.perf_counter()
            plan_with(name, ga, CriterionContext(ga, calib=feeds), Budget(**budget))
            times.append(time.perf_counter() - start)
        print(f"{name:12s} {times[0]:11.2f}s {times[1]:18.2f}s")


@dataclass
class Subject:
    """A trained module and the data it is judged on (images already shaped for its input)."""

    name: str
    module: nn.Module
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]


@dataclass
class Row:
    model: str
    criterion: str
    target: float | None
    flops_kept: float
    params_kept: float
    accuracy: float
    fine_tuned: float
    prune_s: float
    max_rel_change: float | None


def train(module: nn.Module, data: tuple[np.ndarray, np.ndarray], epochs: int, lr: float) -> nn.Module:
    """Adam, batch 32, a seeded shuffle per epoch: every fine-tune sees the same batches in the same order."""
    images, labels = torch.from_numpy(data[0]), torch.from_numpy(data[1])
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=generator).split(BATCH):
            optimizer.zero_grad()
            nn.functional.cross_entropy(module(images[batch]), labels[batch]).backward()
            optimizer.step()
    return module.eval()


def torch_accuracy(module: nn.Module, data: tuple[np.ndarray, np.ndarray]) -> float:
    with torch.no_grad():
        logits = module.eval()(torch.from_numpy(data[0])).numpy()
    return float((logits.argmax(1) == data[1]).mean())


def onnx_accuracy(model, data: tuple[np.ndarray, np.ndarray]) -> float:
    feeds = {model_input_specs(model)[0].name: data[0]}
    logits = next(iter(reference_backend().intermediates(model, feeds).values()))
    return float((logits.argmax(1) == data[1]).mean())


def digits_subject(_: argparse.Namespace) -> Subject:
    return Subject("digits VGG", digits_model(), load_digits_data("train"), validation_set())


def resnet_subject(args: argparse.Namespace) -> Subject:
    def rgb(split: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return np.ascontiguousarray(np.repeat(split[0], 3, axis=1)), split[1]

    train_split, val = rgb(load_digits_data("train")), rgb(validation_set())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        module = train(cifar_resnet(20), train_split, args.resnet_epochs, 1e-3)
    return Subject("ResNet-20 (digits)", module, train_split, val)


SUBJECTS: dict[str, Callable[[argparse.Namespace], Subject]] = {
    "digits": digits_subject,
    "resnet20": resnet_subject,
}


def evaluate(
    subject: Subject, path: Path, calib: Path, criterion: str, target: float | None, flops_before: int
) -> Row:
    budget = {} if target is None else {"flops_target": target}
    start = time.perf_counter()
    result = api.prune(path, criterion=criterion, calib=calib, **budget)
    prune_s = time.perf_counter() - start
    summary = result.summary
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        tuned = train(apply_plan(subject.module, result.surgery), subject.train, 1, FINE_TUNE_LR)
    change = summary.get("output_change")
    return Row(
        model=subject.name,
        criterion=criterion,
        target=target,
        flops_kept=summary["flops_after"] / flops_before,
        params_kept=summary["params_after"] / summary["params_before"],
        accuracy=onnx_accuracy(result.model, subject.val),
        fine_tuned=torch_accuracy(tuned, subject.val),
        prune_s=prune_s,
        max_rel_change=None if change is None else change["max_rel"],
    )


def accuracy_rows(subject: Subject, args: argparse.Namespace, folder: Path) -> list[Row]:
    path = export_onnx(
        subject.module, torch.from_numpy(subject.val[0][:1]), folder / "model.onnx", keep_bn=True
    )
    calib = folder / "calib.npy"
    pfp_calib = folder / "calib_pfp.npy"
    np.save(calib, subject.train[0][: args.calib])
    np.save(pfp_calib, subject.train[0][: args.pfp_calib])
    flops_before = api.analyze(path).flops
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        baseline = train(copy.deepcopy(subject.module), subject.train, 1, FINE_TUNE_LR)
    rows = [
        Row(
            subject.name,
            "original",
            None,
            1.0,
            1.0,
            onnx_accuracy(load_model(path), subject.val),
            torch_accuracy(baseline, subject.val),
            0.0,
            None,
        ),
        evaluate(subject, path, calib, "dead", None, flops_before),
    ]
    for target in args.targets:
        for criterion in ACCURACY_CRITERIA:
            data = pfp_calib if criterion == "pfp" else calib
            rows.append(evaluate(subject, path, data, criterion, target, flops_before))
            print(f"{subject.name}: {criterion} at {target} done", file=sys.stderr, flush=True)
    return rows


def accuracy_table(rows: list[Row]) -> str:
    lines = [
        "| model | criterion | FLOPs target | FLOPs kept | params kept | accuracy | +1 epoch | max rel change | prune s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        change = "" if r.max_rel_change is None else f"{r.max_rel_change:.2e}"
        target = "" if r.target is None else f"{r.target:.1f}"
        lines.append(
            f"| {r.model} | {r.criterion} | {target} | {r.flops_kept:.3f} | {r.params_kept:.3f} | "
            f"{r.accuracy:.2%} | {r.fine_tuned:.2%} | {change} | {r.prune_s:.1f} |"
        )
    return "\n".join(lines)


def goals(rows: list[Row]) -> list[str]:
    """The issue's two goals, checked per model on the accuracy straight after pruning."""
    lines = []
    for model in dict.fromkeys(r.model for r in rows):
        by = {(r.criterion, r.target): r for r in rows if r.model == model}
        original, dead = by[("original", None)], by[("dead", None)]
        lines.append(
            f"- {model}: dead {dead.accuracy:.2%} vs original {original.accuracy:.2%} "
            f"(FLOPs kept {dead.flops_kept:.3f}): {'met' if dead.accuracy >= original.accuracy else 'NOT met'}"
        )
        if ("l1", 0.5) in by:
            l1 = by[("l1", 0.5)].accuracy
            for name in ("pfp", "similarity"):
                acc = by[(name, 0.5)].accuracy
                verdict = "met" if acc >= l1 else "NOT met"
                lines.append(f"- {model}: {name} at 50% FLOPs {acc:.2%} vs l1 {l1:.2%}: {verdict}")
    return lines


def accuracy(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    for name in args.models:
        start = time.perf_counter()
        subject = SUBJECTS[name](args)
        with tempfile.TemporaryDirectory() as folder:
            rows += accuracy_rows(subject, args, Path(folder))
        print(f"{subject.name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print(accuracy_table(rows))
    print()
    print("\n".join(goals(rows)))
    if args.json:
        write_text(args.json, json.dumps([asdict(r) for r in rows], indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", nargs="?", default="timing", choices=("timing", "accuracy"))
    parser.add_argument("--models", default=",".join(SUBJECTS), help="accuracy: " + ", ".join(SUBJECTS))
    parser.add_argument("--targets", default="0.9,0.7,0.5,0.3", help="accuracy: FLOPs targets")
    parser.add_argument("--calib", type=int, default=64, help="accuracy: calibration images")
    parser.add_argument("--pfp-calib", type=int, default=32, help="accuracy: calibration images for pfp")
    parser.add_argument("--resnet-epochs", type=int, default=6, help="accuracy: ResNet-20 training epochs")
    parser.add_argument(
        "--threads", type=int, default=1, help="accuracy: torch threads (more oversubscribe a shared machine)"
    )
    parser.add_argument("--json", type=Path, help="accuracy: also write every row to this JSON file")
    args = parser.parse_args(argv)
    if args.part == "timing":
        timing()
        return
    args.models = [m for m in args.models.split(",") if m]
    unknown = [m for m in args.models if m not in SUBJECTS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(SUBJECTS)}")
    args.targets = [float(t) for t in args.targets.split(",") if t]
    accuracy(args)


if __name__ == "__main__":
    main()
