"""How often the CI gate cries wolf, and how often it misses: `deploysparse check` on A/A and A/B runs
of the packaged recipe on the bundled digits model, on a machine with one core kept busy.

    PYTHONPATH=. python benchmarks/gate.py [--checks 100] [--runs N] [--independent]
        [--recipe x86-cpu-onnxruntime] [--busy-core 0 | --no-busy] [--slowdown 0.15]
        [--extra-layer STAGE:KERNEL:GROUPS[+STAGE:KERNEL:GROUPS]] [--pool 1] [--out gate-out]
        [--reports gate-out] [--json gate.json]

A is the bundled digits VGG exported to ONNX; B is A with an extra conv + ReLU inserted after a
stage (so every later layer reads it), or two after different stages, chosen among a few sizes as the
one whose compact model is closest to `--slowdown` slower than A's compact model (both pruned by the
recipe's prune step, timed interleaved with the recipe's threads here before the runs), or fixed
with `--extra-layer`. Each run is a separate process,
`python -m deploysparse run RECIPE --model A|B.onnx ...`, as a CI job runs it; A and B runs alternate
so a change of the machine's load falls on both. While they run, a process spins on `--busy-core`
(pinned with os.sched_setaffinity), as another job on a shared runner would.

Counted per check (latency checks only; the A/B models differ in params and FLOPs by design):
- A/A, auto mode (the same model on the same machine: relative to the flushed original timed in the
  same runs): a "regressed" is a false alarm;
- A/A, yardstick mode (relative to the yardstick timed in the same runs: what a changed model of
  the same speed, a retrained one, gets in auto mode) and absolute mode (milliseconds: what it got
  before reports timed the yardstick);
- A/B, auto mode (the model changed, the fingerprints match: relative to the yardstick) and absolute
  mode: "regressed" is a detection, anything else a miss;
- A/B, relative mode (what a baseline from another machine gets): by design it cannot see a model
  slower as a whole (B's original has the extra layer too), shown so the table says so.
Each check's verdict is the worst of its latency items (regressed > inconclusive > pass); a second
table counts each latency item (batch size, percentile) on its own.

How checks are counted, honestly: independent runs per check are the gold standard (`--independent`:
2 A runs per A/A check, an A and a B run per A/B check: 300 runs for 100 checks). By default the
benchmark makes N runs of A and N of B (N the smallest with N(N-1) >= --checks) and draws the checks
from the ordered pairs of distinct runs (A/A: baseline A_i, report A_j; A/B: baseline A_i, report
B_j), without repeating a pair. A run then takes part in about 2 x checks / N checks, so the checks
are not independent: the counts estimate the per-check rates, with a wider uncertainty than 100
independent checks would have. The output says which way it counted.

`--pool K`: each check's baseline is K distinct A runs pooled (`check --baseline` given K times, what
a CI keeping the last K main-branch reports does), the report another A run or a B run, drawn at
random without repeating a draw. `--out DIR` keeps every run's report (A-000.json, B-000.json, ...);
`--reports DIR` counts the checks again on them without running anything, so pool sizes (or
confidence levels) compare on the same runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from deploysparse.backends import get_backend
from deploysparse.backends.machine import cpu_name, load_average
from deploysparse.check import Tolerances, compare_reports, resolve_tolerances
from deploysparse.check.pooling import pool_reports
from deploysparse.frontend.torch_export import export_onnx
from deploysparse.pipeline.steps import prune_with_recipe
from deploysparse.recipe import Recipe, load_recipe
from deploysparse.report.schema import Report, load_report
from deploysparse.zoo.digits import INPUT_SHAPE, calibration_set, digits_model, validation_set

# Extra layers tried for B: after the ReLU ending stage 1, 2 or 3 (16x16x64, 8x8x128, 4x4x256),
# a 1x1 conv in 4, 2 or 1 groups, or a 3x3 conv in 8, 4, 2 or 1 groups: about 1%, 1.5%, 3%, 3%, 6%,
# 12% and 25% of A's MACs each (the grouped ones fill the gaps one thread's timing leaves; the
# cheap ones make pairs that land between the singles).
CANDIDATES = [
    (stage, kernel, groups)
    for stage in (1, 2, 3)
    for kernel, groups in ((1, 4), (1, 2), (1, 1), (3, 8), (3, 4), (3, 2), (3, 1))
]
STAGE_RELUS = {1: 1, 2: 3, 3: 5}  # stage -> index of the ReLU node (in graph order) that ends it
PAIRS = 5  # pairs of layers measured after the singles, those whose summed costs come closest


@dataclass(frozen=True)
class Extra:
    """An extra conv + ReLU after the ReLU that ends `stage`: `kernel` x `kernel`, `groups` groups."""

    stage: int
    kernel: int
    groups: int

    @classmethod
    def parse(cls, text: str) -> Extra:
        stage, kernel, groups = (int(part) for part in text.split(":"))
        return cls(stage, kernel, groups)

    def __str__(self) -> str:
        return f"{self.stage}:{self.kernel}:{self.groups}"

    def insert(self, model: onnx.ModelProto, seed: int = 0, tag: str = "gate_extra") -> onnx.ModelProto:
        """A copy of `model` with this layer (its names starting with `tag`) reading the stage's ReLU
        and every former reader reading it."""
        model = onnx.ModelProto.FromString(model.SerializeToString())
        graph = model.graph
        relu = [n for n in graph.node if n.op_type == "Relu"][STAGE_RELUS[self.stage] - 1]
        source = relu.output[0]
        channels = _channels(model, source)
        rng = np.random.default_rng(seed)
        fan_in = channels // self.groups * self.kernel**2
        weight = rng.normal(
            0.0, math.sqrt(2.0 / fan_in), (channels, channels // self.groups, self.kernel, self.kernel)
        )
        bias = np.zeros(channels)
        graph.initializer.extend(
            [
                numpy_helper.from_array(weight.astype(np.float32), f"{tag}.weight"),
                numpy_helper.from_array(bias.astype(np.float32), f"{tag}.bias"),
            ]
        )
        for node in graph.node:
            node.input[:] = [f"{tag}.out" if name == source else name for name in node.input]
        pad = self.kernel // 2
        layer = [
            helper.make_node(
                "Conv",
                [source, f"{tag}.weight", f"{tag}.bias"],
                [f"{tag}.conv"],
                name=f"{tag}/Conv",
                kernel_shape=[self.kernel] * 2,
                pads=[pad] * 4,
                group=self.groups,
            ),
            helper.make_node("Relu", [f"{tag}.conv"], [f"{tag}.out"], name=f"{tag}/Relu"),
        ]
        position = list(graph.node).index(relu) + 1
        nodes = [*graph.node[:position], *layer, *graph.node[position:]]
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.checker.check_model(model)
        return model


@dataclass(frozen=True)
class Extras:
    """B's extra layers, at most one per stage (`1:3:4+2:1:1`): one layer's cost jumps in steps too
    coarse to land near the target, two cheap ones fill the gaps."""

    layers: tuple[Extra, ...]

    @classmethod
    def parse(cls, text: str) -> Extras:
        layers = tuple(Extra.parse(part) for part in text.split("+"))
        if len({layer.stage for layer in layers}) != len(layers):
            raise argparse.ArgumentTypeError(f"{text}: at most one extra layer per stage")
        return cls(layers)

    def __str__(self) -> str:
        return "+".join(str(layer) for layer in self.layers)

    def insert(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """`model` with every layer inserted, the latest stage first (an earlier insertion would shift
        the index of the later stages' ReLUs)."""
        for i, layer in enumerate(sorted(self.layers, key=lambda layer: -layer.stage)):
            model = layer.insert(model, seed=i, tag=f"gate_extra{i or ''}")
        return model


def _channels(model: onnx.ModelProto, tensor: str) -> int:
    inferred = onnx.shape_inference.infer_shapes(model)
    for info in inferred.graph.value_info:
        if info.name == tensor:
            return int(info.type.tensor_type.shape.dim[1].dim_value)
    raise ValueError(f"no shape for {tensor}")


def _spin(core: int) -> None:
    """Keep one core busy, as another job on a shared runner would."""
    os.sched_setaffinity(0, {core})
    while True:
        pass


@contextlib.contextmanager
def busy(core: int | None) -> Iterator[None]:
    if core is None:
        yield
        return
    process = multiprocessing.get_context("fork").Process(target=_spin, args=(core,), daemon=True)
    process.start()
    try:
        yield
    finally:
        process.terminate()
        process.join()


def compact_cost(
    recipe: Recipe, compact_a: onnx.ModelProto, b: onnx.ModelProto, calib: Path, work: Path, rounds: int
) -> dict[int, float]:
    """How much slower B's compact model runs than A's, per batch size of the recipe (interleaved,
    median of `rounds` rounds of 20 calls, with the recipe's threads), B pruned by the recipe's
    prune step as A was."""
    b_path = work / "candidate.onnx"
    onnx.save(b, str(b_path))
    compact_b = prune_with_recipe(recipe, str(b_path), str(calib)).model
    cost = {}
    for batch in recipe.bench.batches:
        timer = get_backend(recipe.build.backend).timer(batch, recipe.bench.threads)  # as the runs time
        ms_a, ms_b = timer.interleaved_ms([compact_a, compact_b], rounds=rounds, per_round=20)
        cost[batch] = ms_b / ms_a - 1
    return cost


def choose_extra(
    recipe: Recipe, a: Path, compact_a: onnx.ModelProto, calib: Path, work: Path, target: float
) -> tuple[Extras, dict[int, float]]:
    """The candidate whose compact model's cost at its cheapest batch size comes closest to `target`
    from above (so that B is at least `target` slower at every batch size, not on average; the closest
    from below when none reaches it): each single layer, then the PAIRS pairs of cheaper layers in
    different stages whose summed mean costs come closest to it."""
    model = onnx.load(str(a))
    print(f"choosing the extra layer: compact B vs compact A, target +{target:.0%}")
    measured: list[tuple[Extras, dict[int, float]]] = []

    def measure(extras: Extras) -> float:
        """The candidate's cost per batch size (kept in `measured`); its mean over them."""
        cost = compact_cost(recipe, compact_a, extras.insert(model), calib, work, rounds=11)
        print(f"  {extras}: " + ", ".join(f"batch {b} {c:+.1%}" for b, c in cost.items()), flush=True)
        measured.append((extras, cost))
        return float(np.mean(list(cost.values())))

    singles = {Extra(*candidate): measure(Extras((Extra(*candidate),))) for candidate in CANDIDATES}
    cheaper = [(layer, cost) for layer, cost in singles.items() if 0 < cost < target]
    pairs = sorted(
        (
            (abs(cost_a + cost_b - target), Extras((layer_a, layer_b)))
            for i, (layer_a, cost_a) in enumerate(cheaper)
            for layer_b, cost_b in cheaper[i + 1 :]
            if layer_a.stage != layer_b.stage
        ),
        key=lambda pair: pair[0],
    )
    for _, extras in pairs[:PAIRS]:
        measure(extras)
    reaching = [row for row in measured if min(row[1].values()) >= target]
    return min(reaching or measured, key=lambda row: abs(min(row[1].values()) - target))


def run(recipe: str, model: Path, data: dict[str, Path], out: Path) -> Path:
    """One `deploysparse run` in its own process; its report.json, kept as out.json."""
    command = [sys.executable, "-m", "deploysparse", "run", recipe, "--model", str(model), "-o", str(out)]
    command += ["--calib", str(data["calib"]), "--data", str(data["val"]), "--labels", str(data["labels"])]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    kept = out.with_suffix(".json")
    kept.write_bytes((out / "report.json").read_bytes())
    return kept


def latency_verdicts(current: Report, baseline: Report, tolerances: Tolerances, mode: str) -> dict[str, str]:
    """The verdict of each latency check (the others compare models that differ on purpose)."""
    result = compare_reports(current, baseline, tolerances, mode)
    return {item.name: item.verdict for item in result.items if item.name.startswith("latency")}


def worst(verdicts: dict[str, str]) -> str:
    """A check's verdict: regressed if any latency item regressed, else inconclusive if any was."""
    return next((v for v in ("regressed", "inconclusive") if v in verdicts.values()), "pass")


def pairs(n_runs: int, checks: int, same: bool, seed: int = 0) -> list[tuple[tuple[int, ...], int]]:
    """`checks` distinct ordered (baseline, report) pairs of run indices, drawn without repetition
    (the baseline as a tuple of one run, as `pooled` draws it)."""
    every = [((i,), j) for i in range(n_runs) for j in range(n_runs) if not (same and i == j)]
    if len(every) < checks:
        raise SystemExit(f"{n_runs} runs give {len(every)} pairs, fewer than --checks {checks}")
    order = np.random.default_rng(seed).permutation(len(every))[:checks]
    return [every[k] for k in sorted(order)]


def pooled(
    n_a: int, n_now: int, checks: int, pool: int, same: bool, seed: int = 0
) -> list[tuple[tuple[int, ...], int]]:
    """`checks` distinct (baseline runs, report run) draws: `pool` distinct A runs pooled as the
    baseline, the report another A run (`same`) or one of the `n_now` B runs."""
    possible = math.comb(n_a, pool) * ((n_a - pool) if same else n_now)
    if possible < checks:
        raise SystemExit(
            f"{n_a} runs of A give {possible} pooled baselines of {pool} with a report, fewer than --checks {checks}"
        )
    rng = np.random.default_rng(seed)
    draws: set[tuple[tuple[int, ...], int]] = set()
    while len(draws) < checks:
        picked = rng.permutation(n_a)
        base = tuple(sorted(int(i) for i in picked[:pool]))
        draws.add((base, int(picked[pool]) if same else int(rng.integers(n_now))))
    return sorted(draws)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=100)
    parser.add_argument("--runs", type=int, help="runs of A and of B (default: enough pairs for --checks)")
    parser.add_argument("--independent", action="store_true", help="fresh runs for every check")
    parser.add_argument("--recipe", default="x86-cpu-onnxruntime", help="recipe name or file")
    parser.add_argument("--busy-core", type=int, default=0, help="core kept busy while the runs run")
    parser.add_argument("--no-busy", action="store_true", help="keep no core busy")
    parser.add_argument("--slowdown", type=float, default=0.15, help="B's target cost over A")
    parser.add_argument(
        "--extra-layer",
        type=Extras.parse,
        help="STAGE:KERNEL:GROUPS[+...] (one per stage) instead of choosing",
    )
    parser.add_argument(
        "--pool", type=int, default=1, help="A runs pooled as each check's baseline (check --baseline x N)"
    )
    parser.add_argument("--confidence", type=float, help="of the latency intervals [check's default]")
    parser.add_argument("--out", type=Path, help="folder for the models and reports [a temporary one]")
    parser.add_argument("--json", type=Path, help="write every verdict and the setting here")
    parser.add_argument(
        "--reports", type=Path, help="count the checks again on the reports an earlier --out kept (no runs)"
    )
    args = parser.parse_args(argv)
    if args.independent and args.reports:
        parser.error("--independent makes runs of its own; --reports counts the runs an earlier --out kept")
    core = None if args.no_busy else args.busy_core
    with contextlib.ExitStack() as stack:
        out = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deploysparse-gate-")))
        summary = measure(args, out, core)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


def kept_reports(folder: Path) -> dict[str, list[Report]]:
    """The A and B reports an earlier run kept in its --out folder (A-000.json, B-000.json, ...)."""
    reports = {name: [load_report(p) for p in sorted(folder.glob(f"{name}-[0-9]*.json"))] for name in "AB"}
    if len(reports["A"]) < 2 or not reports["B"]:
        raise SystemExit(f"{folder}: no A-*.json and B-*.json reports of an earlier --out")
    return reports


def collect(
    args: argparse.Namespace, out: Path, core: int | None
) -> tuple[dict[str, list[Report]], str, dict]:
    """Choose B, then run A and B alternately: the reports, B's extra layer and its interleaved cost."""
    out.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(args.recipe)
    a = export_onnx(digits_model().eval(), torch.randn(*INPUT_SHAPE), out / "a.onnx")
    data = {"calib": out / "calib.npy", "val": out / "val.npy", "labels": out / "labels.npy"}
    np.save(data["calib"], calibration_set())
    x_val, y_val = validation_set()
    np.save(data["val"], x_val)
    np.save(data["labels"], y_val)
    started = time.time()
    with busy(core):
        compact_a = prune_with_recipe(recipe, str(a), str(data["calib"])).model
        if args.extra_layer:
            extra = args.extra_layer
            cost = compact_cost(
                recipe, compact_a, extra.insert(onnx.load(str(a))), data["calib"], out, rounds=11
            )
        else:
            extra, cost = choose_extra(recipe, a, compact_a, data["calib"], out, args.slowdown)
        b = out / "b.onnx"
        onnx.save(extra.insert(onnx.load(str(a))), str(b))
        if args.independent:
            n_a, n_b = 2 * args.checks, args.checks
        else:
            n_a = n_b = args.runs or next(n for n in range(2, 10_000) if n * (n - 1) >= args.checks)
        print(
            f"{n_a} runs of A and {n_b} of B ({args.recipe}), alternating; "
            f"{'core ' + str(core) + ' kept busy' if core is not None else 'no core kept busy'}; "
            f"load average {load_average()}",
            flush=True,
        )
        reports: dict[str, list[Report]] = {"A": [], "B": []}
        for i in range(max(n_a, n_b)):
            for name, model, count in (("A", a, n_a), ("B", b, n_b)):
                if i < count:
                    reports[name].append(load_report(run(args.recipe, model, data, out / f"{name}-{i:03d}")))
            print(f"  run {i + 1} of {max(n_a, n_b)} ({time.time() - started:.0f} s)", flush=True)
    return reports, str(extra), cost


def measure(args: argparse.Namespace, out: Path, core: int | None) -> dict:
    started = time.time()
    if args.reports:
        reports, extra, cost = kept_reports(args.reports), f"as in {args.reports}", {}
    else:
        reports, extra, cost = collect(args, out, core)
    n_a, n_b = len(reports["A"]), len(reports["B"])
    in_runs = {
        point.batch: float(np.median([r.latency.compact_at(point.batch).p50_ms for r in reports["B"]]))
        / float(np.median([r.latency.compact_at(point.batch).p50_ms for r in reports["A"]]))
        - 1
        for point in reports["A"][0].latency.compact
    }
    if args.independent:
        aa = [((2 * k,), 2 * k + 1) for k in range(args.checks)]
        ab = [((2 * k,), k) for k in range(args.checks)]
        counting = f"independent: every check has runs of its own ({n_a + n_b} runs)"
    elif args.pool > 1:
        aa = pooled(n_a, n_a, args.checks, args.pool, same=True)
        ab = pooled(n_a, n_b, args.checks, args.pool, same=False, seed=1)
        counting = (
            f"pooled baselines: each of {args.checks} checks compares one run (another A run, or a B run) "
            f"with {args.pool} A runs pooled as the baseline (check --baseline x {args.pool}), drawn at "
            f"random from {n_a} A and {n_b} B runs; checks share runs, so they are not independent"
        )
    else:
        aa, ab = pairs(n_a, args.checks, same=True), pairs(n_a, args.checks, same=False, seed=1)
        counting = (
            f"pairs: {args.checks} checks drawn from the {n_a * (n_a - 1)} ordered pairs of {n_a} A runs "
            f"(A/A) and the {n_a * n_b} pairs of A and B runs (A/B); a run takes part in about "
            f"{2 * args.checks / n_a:.0f} checks, so checks are not independent"
        )
    baselines: dict[tuple[int, ...], Report] = {}  # each pooled baseline built once, for every mode

    def baseline_of(base: tuple[int, ...]) -> Report:
        if base not in baselines:
            baselines[base] = pool_reports(
                [(Path(f"A-{i:03d}.json"), reports["A"][i]) for i in base], "--baseline"
            )
        return baselines[base]

    rows = []
    for label, comparison, mode in (
        ("A/A", aa, "auto"),
        ("A/A", aa, "yardstick"),
        ("A/A", aa, "absolute"),
        ("A/B", ab, "auto"),
        ("A/B", ab, "absolute"),
        ("A/B", ab, "relative"),
    ):
        items = []
        for base, now in comparison:
            current = reports["A" if label == "A/A" else "B"][now]
            tolerances = resolve_tolerances(current, confidence=args.confidence)
            items.append(latency_verdicts(current, baseline_of(base), tolerances, mode))
        verdicts = [worst(item) for item in items]
        counts = {v: verdicts.count(v) for v in ("regressed", "inconclusive", "pass")}
        per_item = {
            name: {v: sum(item[name] == v for item in items) for v in (*counts, "not gated")}
            for name in items[0]
        }
        rows.append(
            {
                "comparison": label,
                "mode": mode,
                "checks": len(verdicts),
                **counts,
                "verdicts": verdicts,
                "items": per_item,
            }
        )
    tolerances = resolve_tolerances(reports["A"][0], confidence=args.confidence)
    print()
    print(f"machine: {cpu_name()}; load average {load_average()}; {time.time() - started:.0f} s")
    print(f"B = A + extra layer {extra} (stage:kernel:groups, + between layers)")
    if cost:
        print(
            "B's compact model vs A's: "
            + ", ".join(f"batch {b} {c:+.1%}" for b, c in cost.items())
            + " (interleaved)"
        )
    print("in the runs (median compact p50): " + ", ".join(f"batch {b} {c:+.1%}" for b, c in in_runs.items()))
    print(
        f"gate: latency tolerance +{tolerances.latency:.0%}, {tolerances.confidence:.0%} intervals; "
        f"counting {counting}"
    )
    print("| comparison | mode | checks | regressed | inconclusive | pass |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['comparison']} | {row['mode']} | {row['checks']} | {row['regressed']} | "
            f"{row['inconclusive']} | {row['pass']} |"
        )
    print()
    print("per latency check: regressed / inconclusive / pass / not gated")
    print("| comparison | mode | " + " | ".join(rows[0]["items"]) + " |")
    print("| --- | --- |" + " ---: |" * len(rows[0]["items"]))
    for row in rows:
        cells = ["/".join(str(c) for c in counts.values()) for counts in row["items"].values()]
        print(f"| {row['comparison']} | {row['mode']} | " + " | ".join(cells) + " |")
    return {
        "machine": cpu_name(),
        "busy_core": core,
        "pool": args.pool,
        "recipe": args.recipe,
        "extra_layer": str(extra),
        "cost_interleaved": cost,
        "cost_in_runs": in_runs,
        "latency_tolerance": tolerances.latency,
        "confidence": tolerances.confidence,
        "counting": counting,
        "runs": {"A": n_a, "B": n_b},
        "seconds": round(time.time() - started),
        "rows": rows,
    }


if __name__ == "__main__":
    sys.exit(main())
