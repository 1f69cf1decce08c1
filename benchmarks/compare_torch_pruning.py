"""deploysparse against Torch-Pruning, same criterion (L1 filter norm), same budgets, one run.

Goal (issue: side by side with the tools users would otherwise pick): full coverage where
Torch-Pruning breaks, wall time of the whole workflow (trained nn.Module -> compact ONNX) at most
Torch-Pruning's, and equal or better accuracy at equal FLOPs. docs/comparison.md holds the figures.

    PYTHONPATH=$PWD python benchmarks/compare_torch_pruning.py [--archs a,b] [--repeats 3]

Two parts:
- the architecture suite of the tests (tests/archs, random weights): coverage (output shapes equal
  the original's, ONNX exports and runs in ONNX Runtime), params, MACs, latency, wall time;
- the bundled digits CNN (trained, with real dead filters): the same plus validation accuracy
  without fine-tuning and after one epoch of Adam (lr 1e-4) on the training split, and how many of
  the original's dead filters each compact model still carries.
Tools: deploysparse (`export_onnx` + `api.prune(criterion="l1")`), Torch-Pruning with the layers
that write model outputs in `ignored_layers` ("TP careful"), and Torch-Pruning with its defaults
("TP defaults", at 50 % channels only: it prunes the head whatever the ratio). Needs the `bench`
extra (torch-pruning). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _common import Outcome, StageError, check_outcome, count, first_line, latency, test_archs, timed_median
from _workflows import BUDGETS, Budget, deploysparse_workflow, torch_pruning_workflow
from torch import nn

DS, TP_CAREFUL, TP_DEFAULT = "deploysparse", "TP careful", "TP defaults"
ARCH_BUDGETS = ("50% channels", "50% FLOPs")
# --ds-dead-threshold: None = deploysparse's default (a one-element list so main() can set it).
DS_DEAD_THRESHOLD: list[float | None] = [None]
TP_EXPORTER: list[str] = ["dynamo"]  # set from --tp-exporter
FINE_TUNE_LR = 1e-4
FINE_TUNE_BATCH = 32


def run_tool(
    tool: str,
    model_name: str,
    original: nn.Module,
    example: torch.Tensor,
    budget: Budget,
    calib: dict[str, np.ndarray],
    folder: Path,
    repeats: int,
) -> Outcome:
    """Run one tool's workflow `repeats` times (timed), then measure the last result."""
    outcome = Outcome(tool=tool, model=model_name, budget=budget.name)
    out = folder / f"{model_name}-{tool}-{budget.name}".replace(" ", "_").replace("%", "pct")

    def workflow(run_dir: Path):
        if tool == DS:
            return deploysparse_workflow(original, example, budget, calib, run_dir, DS_DEAD_THRESHOLD[0])
        return torch_pruning_workflow(original, example, budget, tool == TP_CAREFUL, run_dir, TP_EXPORTER[0])

    try:
        result, outcome.seconds = timed_median(workflow, out, repeats)
    except StageError as exc:
        outcome.error = str(exc)
        return outcome
    if tool == DS:
        prune_result, outcome.onnx_path = result
        outcome.dead_removed = int(prune_result.summary["dead_removed"])
        outcome.extra["original_onnx"] = outcome.onnx_path.parent / "model.onnx"
        try:
            from deploysparse.torch import apply_plan

            outcome.module = apply_plan(original, prune_result.surgery)
        except Exception as exc:
            outcome.extra["apply_plan"] = first_line(exc)
    else:
        outcome.module, outcome.onnx_path = result
    return outcome


def measure(outcome: Outcome, original: nn.Module, example: torch.Tensor, seed: int) -> None:
    """Coverage, params/MACs (one counter), ORT latency: the same measurements for every tool."""
    if outcome.error and outcome.onnx_path is None:
        return
    check_outcome(outcome, original, tuple(example.shape[1:]), seed)
    if outcome.module is not None and outcome.shapes_ok:
        outcome.params, outcome.macs = count(outcome.module, example)
    elif outcome.ort_ok and "original_onnx" in outcome.extra:
        outcome.extra["onnx_kept"] = onnx_kept(outcome.onnx_path, outcome.extra["original_onnx"])
    if outcome.ort_ok:
        outcome.latency_ms = latency(outcome.onnx_path)


def warm_up(folder: Path) -> None:
    """One untimed pass of both workflows on a tiny model: the first dynamo export in a process pays
    for importing and initialising the exporter (several seconds), which would land on whichever tool
    happens to run first."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))
    example = torch.randn(2, 1, 4, 4)
    budget = BUDGETS[1]
    deploysparse_workflow(
        model.eval(), example, budget, {"input": example.numpy()}, _fresh(folder / "warm-ds")
    )
    torch_pruning_workflow(model.eval(), example, budget, True, _fresh(folder / "warm-tp"), TP_EXPORTER[0])


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def onnx_kept(compact: Path, original: Path) -> tuple[float, float]:
    """Fractions of params and MACs kept by deploysparse's ONNX counter: the fallback when no compact
    nn.Module exists to count with Torch-Pruning's counter (marked with a dagger in the tables)."""
    from deploysparse import api

    before, after = api.analyze(original), api.analyze(compact)
    return after.params / before.params, after.flops / before.flops


def arch_suite(names: list[str], folder: Path, repeats: int) -> tuple[list[Outcome], dict]:
    archs = test_archs()
    outcomes, baselines = [], {}
    for name in names:
        arch = archs[name]
        original = arch.build()
        example = arch.example()
        calib = {"input": arch.example(32).numpy()}
        baselines[name] = count(original, example)
        for budget in BUDGETS:
            if budget.name not in ARCH_BUDGETS:
                continue
            tools = [DS, TP_CAREFUL] + ([TP_DEFAULT] if budget.ratio == 0.5 else [])
            for tool in tools:
                outcome = run_tool(tool, name, original, example, budget, calib, folder, repeats)
                measure(outcome, original, example, arch.seed)
                outcomes.append(outcome)
                print(f"  {name:<20} {budget.name:<13} {tool:<12} {status(outcome)}", flush=True)
    return outcomes, baselines


def accuracy_ort(path: Path, images: np.ndarray, labels: np.ndarray) -> float | None:
    from _common import ort_outputs

    logits = ort_outputs(path, images)[0]
    if logits.shape != (len(images), 10):
        return None
    return float(np.mean(logits.argmax(1) == labels))


def accuracy_torch(module: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    module.eval()
    with torch.no_grad():
        logits = module(torch.from_numpy(images))
    return float(np.mean(logits.argmax(1).numpy() == labels))


def fine_tune(module: nn.Module, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> nn.Module:
    """One epoch of Adam (lr 1e-4, batch 32) in a fixed sample order: the same for every compact model."""
    tuned = copy.deepcopy(module)
    torch.manual_seed(seed)
    tuned.train()
    optimiser = torch.optim.Adam(tuned.parameters(), lr=FINE_TUNE_LR)
    order = np.random.default_rng(seed).permutation(len(images))
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    for start in range(0, len(order), FINE_TUNE_BATCH):
        idx = torch.from_numpy(order[start : start + FINE_TUNE_BATCH])
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(tuned(x_all[idx]), y_all[idx])
        loss.backward()
        optimiser.step()
    return tuned.eval()


def dead_left(path: Path, calib: dict[str, np.ndarray]) -> int:
    """Dead filters deploysparse's analysis still finds in a compact ONNX (any tool's: one detector)."""
    from deploysparse import api

    return int(api.analyze(path, calib=calib).dead.count)


@dataclass
class Digits:
    """The trained digits model and its data: what every digits run is measured against."""

    original: nn.Module
    calib: dict[str, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    train: tuple[np.ndarray, np.ndarray]

    @property
    def example(self) -> torch.Tensor:
        return torch.from_numpy(self.calib["input"][:2])


def digits_run(digits: Digits, tool: str, budget: Budget, folder: Path, repeats: int) -> Outcome:
    """One digits run: the common measurements, then accuracy before and after the short fine-tune."""
    outcome = run_tool(tool, "digits", digits.original, digits.example, budget, digits.calib, folder, repeats)
    measure(outcome, digits.original, digits.example, seed=1)
    if outcome.ort_ok:
        outcome.extra["acc"] = accuracy_ort(outcome.onnx_path, *digits.val)
        outcome.extra["dead_left"] = dead_left(outcome.onnx_path, digits.calib)
    if outcome.module is not None and outcome.shapes_ok:
        outcome.extra["acc_ft"] = accuracy_torch(fine_tune(outcome.module, *digits.train), *digits.val)
    print(f"  digits {budget.name:<13} {tool:<12} {status(outcome)}", flush=True)
    return outcome


def onnx_macs(path: Path) -> int:
    """MACs by deploysparse's own counter (Conv/Gemm on the ONNX graph): its flops_target's unit."""
    from deploysparse import api

    return int(api.analyze(path).flops)


def digits_suite(weights: str, folder: Path, repeats: int) -> tuple[list[Outcome], dict]:
    """Every budget for every tool, then deploysparse once more at the MACs Torch-Pruning reached.

    Torch-Pruning's iterative FLOPs search stops below the target and deploysparse's budget lands
    within 2 points of it, so "50 % FLOPs" leaves the two at different sizes; the extra run gives
    deploysparse the fraction TP's compact model actually has (by deploysparse's counter) for an
    accuracy comparison at equal FLOPs.
    """
    from deploysparse.zoo.digits import calibration_set, digits_model, load_digits_data, validation_set

    digits = Digits(
        original=digits_model(weights),
        calib={"input": calibration_set()},
        val=validation_set(),
        train=load_digits_data("train"),
    )
    params, macs = count(digits.original, digits.example)
    info = {"params": params, "macs": macs, "accuracy": accuracy_torch(digits.original, *digits.val)}
    outcomes = []
    for budget in BUDGETS:
        for tool in [DS, TP_CAREFUL] + ([TP_DEFAULT] if budget.ratio == 0.5 else []):
            outcomes.append(digits_run(digits, tool, budget, folder, repeats))
    reference = next((o.extra["original_onnx"] for o in outcomes if "original_onnx" in o.extra), None)
    tp_flops = find(outcomes, "digits", "50% FLOPs", TP_CAREFUL)
    if reference is not None:
        info["dead_total"] = dead_left(reference, digits.calib)
        info["latency"] = latency(reference)
        if tp_flops is not None and tp_flops.ort_ok:
            target = onnx_macs(tp_flops.onnx_path) / onnx_macs(reference)
            matched = Budget(f"{100 * target:.1f}% FLOPs (TP's)", flops_target=target)
            outcomes.append(digits_run(digits, DS, matched, folder, repeats))
    return outcomes, info


def status(o: Outcome) -> str:
    if o.error and not o.ort_ok:
        return f"FAILED {o.error}"
    if not o.shapes_ok:
        return "output shape differs from the original's"
    problems = [o.extra[k] for k in ("apply_plan", "module_error") if k in o.extra]
    extra = "".join(f"; {p}" for p in problems)
    return f"ok ({o.wall_s:.2f} s){extra}"


def cell(o: Outcome | None) -> str:
    if o is None:
        return "—"
    if o.error and not o.ort_ok:
        return f"fails ({o.error})"
    if not o.shapes_ok:
        return "wrong output shape"
    if "apply_plan" in o.extra or "module_error" in o.extra:
        return "ONNX ok, compact nn.Module broken"
    return "ok"


def pct(value: int | None, base: int) -> str:
    return "—" if value is None else f"{100.0 * value / base:.1f}%"


def kept(o: Outcome, params: int, macs: int) -> str:
    """'params kept | MACs kept' cells: Torch-Pruning's counter on the module, else the ONNX fallback."""
    if o.params is None and "onnx_kept" in o.extra:
        p, m = o.extra["onnx_kept"]
        return f"{100 * p:.1f}%† | {100 * m:.1f}%†"
    return f"{pct(o.params, params)} | {pct(o.macs, macs)}"


def ms(o: Outcome, batch: int) -> str:
    return f"{o.latency_ms[batch]:.3f}" if batch in o.latency_ms else "—"


def secs(o: Outcome) -> str:
    return "—" if o.wall_s is None else f"{o.wall_s:.2f}"


def find(outcomes: list[Outcome], model: str, budget: str, tool: str) -> Outcome | None:
    return next((o for o in outcomes if (o.model, o.budget, o.tool) == (model, budget, tool)), None)


def wall_ratio(outcomes: list[Outcome], model: str, budget: str) -> float | None:
    ds, tp = find(outcomes, model, budget, DS), find(outcomes, model, budget, TP_CAREFUL)
    if ds is None or tp is None or ds.wall_s is None or tp.wall_s is None:
        return None
    return ds.wall_s / tp.wall_s


def coverage_table(outcomes: list[Outcome], names: list[str]) -> str:
    cols = [(b, t) for b in ARCH_BUDGETS for t in (DS, TP_CAREFUL)] + [("50% channels", TP_DEFAULT)]
    lines = [
        "| arch | " + " | ".join(f"{t}, {b}" for b, t in cols) + " |",
        "| --- |" + " --- |" * len(cols),
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(cell(find(outcomes, name, b, t)) for b, t in cols) + " |")
    return "\n".join(lines)


def metrics_table(outcomes: list[Outcome], baselines: dict) -> str:
    lines = [
        "| model | budget | tool | params kept | MACs kept | p50 ms b1 | p50 ms b8 | wall s | wall ds/TP |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        if o.tool == TP_DEFAULT:
            continue
        params, macs = baselines[o.model]
        ratio = wall_ratio(outcomes, o.model, o.budget) if o.tool == DS else None
        lines.append(
            f"| {o.model} | {o.budget} | {o.tool} | {kept(o, params, macs)} | "
            f"{ms(o, 1)} | {ms(o, 8)} | {secs(o)} | {'' if ratio is None else f'{ratio:.2f}'} |"
        )
    return "\n".join(lines)


def digits_table(outcomes: list[Outcome], info: dict) -> str:
    def acc(value: float | None) -> str:
        return "—" if value is None else f"{100.0 * value:.1f}%"

    lines = [
        "| budget | tool | output ok | params kept | MACs kept | val acc | val acc after 1-epoch FT | "
        "dead filters left | p50 ms b1 | p50 ms b8 | wall s (median) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| — | original | ok | {info['params']} | {info['macs']} | {acc(info['accuracy'])} | — | "
        f"{info.get('dead_total', '—')} | {info.get('latency', {}).get(1, float('nan')):.3f} | "
        f"{info.get('latency', {}).get(8, float('nan')):.3f} | — |",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.budget} | {o.tool} | {cell(o)} | {kept(o, info['params'], info['macs'])} | "
            f"{acc(o.extra.get('acc'))} | {acc(o.extra.get('acc_ft'))} | "
            f"{o.extra.get('dead_left', '—')} | {ms(o, 1)} | {ms(o, 8)} | {secs(o)} |"
        )
    return "\n".join(lines)


def summary(outcomes: list[Outcome]) -> str:
    ratios = [
        r
        for model, budget in sorted({(o.model, o.budget) for o in outcomes})
        if (r := wall_ratio(outcomes, model, budget)) is not None
    ]
    lines = []
    for tool in (DS, TP_CAREFUL, TP_DEFAULT):
        runs = [o for o in outcomes if o.tool == tool]
        ok = sum(1 for o in runs if o.shapes_ok and o.ort_ok)
        lines.append(f"- {tool}: {ok}/{len(runs)} runs give the original's output shapes and run in ORT")
    broken = [o for o in outcomes if "apply_plan" in o.extra or "module_error" in o.extra]
    lines.append(f"- compact nn.Modules that could not be built or do not run: {len(broken)}")
    for o in broken:
        problem = o.extra.get("apply_plan") or o.extra["module_error"]
        lines.append(f"  - {o.tool}, {o.model}, {o.budget}: {problem}")
    drift = [o.onnx_vs_module for o in outcomes if o.onnx_vs_module is not None]
    if drift:
        lines.append(f"- max |compact ONNX - compact module| over all runs: {max(drift):.2e}")
    if ratios:
        lines.append(
            f"- wall time deploysparse / TP careful: median {statistics.median(ratios):.2f}, "
            f"range {min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} model/budget pairs"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="all", help="comma-separated tests/archs names, 'all' or 'none'")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per digits workflow (median)")
    parser.add_argument("--arch-repeats", type=int, default=1, help="timed runs per architecture workflow")
    parser.add_argument("--digits-weights", default="bundled", help="digits checkpoint ('bundled' or a path)")
    parser.add_argument("--no-digits", action="store_true", help="skip the digits part")
    parser.add_argument(
        "--ds-dead-threshold",
        type=float,
        default=None,
        help="deploysparse --dead-threshold (default: its own)",
    )
    parser.add_argument(
        "--tp-exporter",
        choices=("dynamo", "legacy"),
        default="dynamo",
        help="torch exporter in Torch-Pruning's workflow (dynamo: torch's default)",
    )
    args = parser.parse_args()
    DS_DEAD_THRESHOLD[0] = args.ds_dead_threshold
    TP_EXPORTER[0] = args.tp_exporter
    from importlib.metadata import version

    torch.set_num_threads(2)
    logging.getLogger("torch").setLevel(logging.ERROR)
    all_archs = list(test_archs())
    presets = {"all": all_archs, "none": []}
    names = presets[args.archs] if args.archs in presets else args.archs.split(",")
    unknown = sorted(set(names) - set(all_archs))
    if unknown:
        parser.error(f"--archs: unknown {', '.join(unknown)}; choose from {', '.join(all_archs)}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="compare-tp-") as tmp:
        folder = Path(tmp)
        print(f"torch {torch.__version__}, torch-pruning {version('torch-pruning')}", flush=True)
        print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
        warm_up(folder)
        arch_outcomes, baselines = arch_suite(names, folder, args.arch_repeats)
        digits_outcomes, info = (
            ([], {}) if args.no_digits else digits_suite(args.digits_weights, folder, args.repeats)
        )
        print(f"\nfinished in {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.1f}\n")
        if names:
            print("## Coverage (tests/archs)\n\n" + coverage_table(arch_outcomes, names) + "\n")
            print(
                "## Size, latency, wall time (tests/archs)\n\n"
                + metrics_table(arch_outcomes, baselines)
                + "\n"
            )
        if digits_outcomes:
            print("## Digits CNN\n\n" + digits_table(digits_outcomes, info) + "\n")
        print("## Summary\n\n" + summary(arch_outcomes + digits_outcomes))


if __name__ == "__main__":
    main()
