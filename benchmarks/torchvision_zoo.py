"""deploysparse against Torch-Pruning on every torchvision classification model, as a new user tries them.

Goal (issue 25, "done when"): on torchvision's classification models under 150M parameters (random
init, TorchScript export), `deploysparse prune --criterion l1 --ratio 0.3 --round-to 8` prunes at
least 70 of 75, each compact model answering with the original's output shape and none with a group
cut to 10% of its channels or less, beside Torch-Pruning's README recipe on the same models
(`BasePruner`, `GroupMagnitudeImportance(p=2)`, `pruning_ratio=0.3`, `round_to=8`, the 1000-class
Linear ignored). Needs the `bench` extra (torch-pruning) and torchvision:

    .venv/bin/pip install torch-pruning && .venv/bin/pip install --no-deps torchvision==0.28.0 pillow
    PYTHONPATH=$PWD .venv/bin/python benchmarks/torchvision_zoo.py --out zoo-out [--only 'resnet*,vgg11']
        [--skip 'vit_*'] [--tools deploysparse,torch-pruning] [--input-size 224] [--timeout 1800]

Every (model, tool) runs in its own process (a crash or a timeout costs one row), smallest model
first, and its row is appended to OUT/results.jsonl as soon as it ends, so an interrupted run resumes where it stopped
(`--redo` runs the selected rows again). Each run rewrites OUT/zoo.md (the table for
docs/comparison.md) and OUT/zoo.json from every row stored.

Per row: pruned (some channels removed), the compact model's output shape against the original's
(ONNX Runtime, one random batch), params and MACs kept, counted for both tools by the same ruler
(deploysparse's ONNX counter: Torch-Pruning's module is exported the same way first), the smallest
fraction of channels any layer kept (flagged at 10% or less), and the time: deploysparse's CLI as a
user runs it (process start, imports, load, prune, output check, save), Torch-Pruning in-process
(dependency graph, importance, pruning); the exports are timed apart.

A CUDA build of torchvision imports on a CPU-only torch once its two C++ ops are declared
(`torchvision::nms`, `torchvision::qnms`, the schemas of torchvision/csrc/ops/nms.cpp and qnms.cpp):
`import_torchvision` does that when the ops are missing.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("deploysparse", "torch-pruning")
MAX_PARAMS = 150e6
RATIO, ROUND_TO = 0.3, 8
GUTTED = 0.1  # a layer that keeps this fraction of its channels or less is flagged
INPUT_SIZES = {"inception_v3": 299}  # the size a model is meant for, where 224 is not it
_TORCHVISION_OPS: list[Any] = []  # the Library that declares the missing ops must stay alive


def import_torchvision() -> Any:
    """torchvision.models, declaring the C++ ops a CUDA build cannot load on a CPU-only torch."""
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 (does the op exist?)
    except (AttributeError, RuntimeError):
        library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_OPS.append(library)
    import torchvision.models

    return torchvision.models


def model_sizes(names: list[str], cache: Path) -> dict[str, int]:
    """Parameters of each named torchvision model, counted on the meta device (no memory, no
    initialisation) where the builder allows it, else built with nn.init's functions skipped
    (RegNet's builder computes its widths from tensors); kept in `cache` for the next run."""
    import torch

    sizes = json.loads(cache.read_text()) if cache.exists() else {}
    models = import_torchvision()
    for name in names:
        if name in sizes:
            continue
        try:
            with torch.device("meta"):
                module = models.get_model(name, weights=None)
        except NotImplementedError:
            with _uninitialised():
                module = models.get_model(name, weights=None)
        sizes[name] = sum(p.numel() for p in module.parameters())
        del module
    cache.write_text(json.dumps(sizes, indent=1) + "\n")
    return sizes


@contextlib.contextmanager
def _uninitialised() -> Iterator[None]:
    """torch.nn.init's in-place initialisers made no-ops: a model is built in its memory, untouched."""
    import torch

    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def all_models() -> list[str]:
    """Every torchvision classification model's name."""
    models = import_torchvision()
    return sorted(models.list_models(module=models))


def select(names: list[str], only: str | None, skip: str | None) -> list[str]:
    """Names matching any of the comma-separated `only` patterns (all without), minus `skip`'s."""

    def matches(name: str, patterns: str | None) -> bool:
        return any(fnmatch.fnmatchcase(name, p.strip()) for p in (patterns or "").split(",") if p.strip())

    return [n for n in names if (only is None or matches(n, only)) and not matches(n, skip)]


# --- one (model, tool), in a process of its own --------------------------------------------------


def build(name: str, input_size: int | None) -> tuple[Any, Any]:
    """The model with seeded random weights, in eval mode, and one example input."""
    import torch

    models = import_torchvision()
    torch.manual_seed(0)
    module = models.get_model(name, weights=None).eval()
    size = input_size or INPUT_SIZES.get(name, 224)
    return module, torch.randn(1, 3, size, size)


def export(module: Any, example: Any, path: Path) -> float:
    """TorchScript export, BatchNorm kept; returns the seconds it took."""
    from deploysparse.frontend.torch_export import export_onnx

    start = time.perf_counter()
    export_onnx(module, example, path, exporter="legacy", keep_bn=True)
    return time.perf_counter() - start


def output_shapes(path: Path, example: Any) -> list[list[int]]:
    """The shapes the ONNX model answers one random batch of 2 with (ONNX Runtime, CPU)."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, *example.shape[1:])).astype(np.float32)
    return [list(out.shape) for out in session.run(None, {session.get_inputs()[0].name: x})]


def count(path: Path) -> tuple[int, int]:
    """(params, MACs) by deploysparse's counter on the ONNX graph: one ruler for both tools."""
    from deploysparse import api

    analysis = api.analyze(str(path), time_denormals=False)
    return analysis.params, analysis.flops


def run_deploysparse(name: str, input_size: int | None, work: Path) -> dict[str, Any]:
    module, example = build(name, input_size)
    original = work / "model.onnx"
    row: dict[str, Any] = {"export_s": export(module, example, original)}
    compact = work / "compact.onnx"
    cli = Path(sys.executable).with_name("deploysparse")
    argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "deploysparse"]
    argv += ["prune", str(original), "--criterion", "l1", "--ratio", str(RATIO), "--round-to", str(ROUND_TO)]
    start = time.perf_counter()
    done = subprocess.run([*argv, "-o", str(compact), "--json"], capture_output=True, text=True)
    row["seconds"] = time.perf_counter() - start
    if done.returncode != 0:
        return {**row, "error": f"exit {done.returncode}: {(done.stderr.strip().splitlines() or ['?'])[-1]}"}
    summary = json.loads(done.stdout)
    kept = [g["kept"] / g["channels"] for g in summary["groups"] if g["prunable"]]
    smallest = min(
        (g for g in summary["groups"] if g["prunable"]), key=lambda g: g["kept"] / g["channels"], default=None
    )
    row.update(
        channels_removed=summary["channels_removed"],
        params_kept=summary["params_after"] / summary["params_before"],
        macs_kept=summary["flops_after"] / max(summary["flops_before"], 1),
        min_kept=min(kept, default=1.0),
        min_kept_layer=f"{smallest['label']} {smallest['kept']}/{smallest['channels']}" if smallest else "",
        budget_met=summary["budget_met"],
        budget=summary["budget"],
        capped=len(summary["capped"]),
        pinned_by_op=[
            f"{s['op']} ({s['reason']}): {s['groups']} groups, {s['macs_share']:.0%} of MACs"
            for s in summary["pinned_by_op"][:3]
            if s["op"] != "graph"
        ],
    )
    row["shape_ok"] = output_shapes(compact, example) == output_shapes(original, example)
    return row


def run_torch_pruning(name: str, input_size: int | None, work: Path) -> dict[str, Any]:
    import torch
    import torch_pruning as tp

    module, example = build(name, input_size)
    row: dict[str, Any] = {}
    original = work / "model.onnx"
    row["export_s"] = export(module, example, original)
    widths = _widths(module)
    start = time.perf_counter()
    ignored = [m for m in module.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
    pruner = tp.pruner.BasePruner(
        module,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=RATIO,
        ignored_layers=ignored,
        round_to=ROUND_TO,
    )
    pruner.step()
    row["seconds"] = time.perf_counter() - start
    after = _widths(module)
    fractions = {layer: after[layer] / width for layer, width in widths.items() if layer in after}
    row["channels_removed"] = sum(widths.values()) - sum(after.get(layer, 0) for layer in widths)
    smallest = min(fractions, key=fractions.get, default=None)
    row["min_kept"] = fractions[smallest] if smallest else 1.0
    row["min_kept_layer"] = f"{smallest} {after[smallest]}/{widths[smallest]}" if smallest else ""
    compact = work / "compact.onnx"
    export(module, example, compact)
    (params_before, macs_before), (params_after, macs_after) = count(original), count(compact)
    row.update(params_kept=params_after / params_before, macs_kept=macs_after / max(macs_before, 1))
    row["shape_ok"] = output_shapes(compact, example) == output_shapes(original, example)
    return row


def _widths(module: Any) -> dict[str, int]:
    """Output channels of every conv and linear layer, by module name."""
    import torch

    return {
        name: layer.out_channels if isinstance(layer, torch.nn.Conv2d) else layer.out_features
        for name, layer in module.named_modules()
        if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear)
    }


def worker(name: str, tool: str, input_size: int | None) -> dict[str, Any]:
    """One row: the tool's run on the model, or the error that stopped it."""
    run = run_deploysparse if tool == "deploysparse" else run_torch_pruning
    row: dict[str, Any] = {"model": name, "tool": tool}
    with tempfile.TemporaryDirectory(prefix=f"zoo-{name}-") as work:
        try:
            row.update(run(name, input_size, Path(work)))
        except Exception as exc:  # the row says what broke; the next model still runs
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            row["error"] = f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
    row["pruned"] = not row.get("error") and row.get("channels_removed", 0) > 0
    return row


# --- the driver -----------------------------------------------------------------------------------


def stored(results: Path) -> list[dict[str, Any]]:
    if not results.exists():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def run_one(name: str, tool: str, args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--worker", name, "--tool", tool]
    if args.input_size:
        argv += ["--input-size", str(args.input_size)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"model": name, "tool": tool, "pruned": False, "error": f"timeout after {args.timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {
            "model": name,
            "tool": tool,
            "pruned": False,
            "error": f"worker exit {done.returncode}: {tail}",
        }
    row = json.loads(lines[-1])
    row["wall_s"] = time.perf_counter() - start
    return row


def markdown(rows: list[dict[str, Any]], sizes: dict[str, int]) -> str:
    """The comparison table: per model, each tool's result, and the counts above it."""
    by = {(r["model"], r["tool"]): r for r in rows}
    models = sorted({r["model"] for r in rows})
    lines = []
    for tool in TOOLS:
        done = [by[(m, tool)] for m in models if (m, tool) in by]
        if not done:
            continue
        good = [r for r in done if r["pruned"] and r.get("shape_ok")]
        gutted = [r for r in good if r.get("min_kept", 1.0) <= GUTTED]
        lines.append(
            f"- {tool}: pruned with the original's output shape {len(good)} / {len(done)}; "
            f"a layer cut to {GUTTED:.0%} or less in {len(gutted)}"
            + (f" ({', '.join(r['model'] for r in gutted)})" if gutted else "")
        )
    head = ["model", "params (M)"] + [
        f"{t} {c}" for t in TOOLS for c in ("", "params kept", "MACs kept", "min layer", "s")
    ]
    lines += ["", "| " + " | ".join(h.strip() for h in head) + " |", "|" + " --- |" * len(head)]
    for model in models:
        cells = [model, f"{sizes.get(model, 0) / 1e6:.1f}"]
        for tool in TOOLS:
            cells += _cells(by.get((model, tool)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cells(row: dict[str, Any] | None) -> list[str]:
    if row is None:
        return ["not run", "", "", "", ""]
    if row.get("error"):
        return [f"error: {row['error'][:80]}", "", "", "", ""]
    if not row["pruned"]:
        verdict = "not pruned" + (f" ({row['pinned_by_op'][0]})" if row.get("pinned_by_op") else "")
    elif not row.get("shape_ok"):
        verdict = "wrong output shape"
    else:
        verdict = "pruned" + ("" if row.get("budget_met", True) else " (budget not met)")
    flag = " ⚠" if row.get("min_kept", 1.0) <= GUTTED else ""
    return [
        verdict,
        f"{row['params_kept']:.0%}",
        f"{row['macs_kept']:.0%}",
        f"{row['min_kept']:.0%}{flag}",
        f"{row['seconds']:.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("zoo-out"))
    parser.add_argument("--only", help="comma-separated model name patterns (fnmatch) to run")
    parser.add_argument("--skip", help="comma-separated model name patterns to leave out")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--max-params", type=float, default=MAX_PARAMS)
    parser.add_argument("--input-size", type=int, help="square input size for every model (default 224)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per (model, tool)")
    parser.add_argument("--redo", action="store_true", help="run rows already stored again")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tool", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.tool, args.input_size)), flush=True)
        return
    tools = [t for t in args.tools.split(",") if t]
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        parser.error(f"unknown tool {unknown[0]}; choose from {', '.join(TOOLS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    named = select(all_models(), args.only, args.skip)
    sizes = {n: c for n, c in model_sizes(named, args.out / "sizes.json").items() if c < args.max_params}
    names = sorted((n for n in named if n in sizes), key=sizes.get)  # smallest first: most rows soonest
    results = args.out / "results.jsonl"
    done = {(r["model"], r["tool"]) for r in stored(results)}
    print(f"{len(names)} selected models under {args.max_params / 1e6:.0f}M parameters", flush=True)
    for name in names:
        for tool in tools:
            if (name, tool) in done and not args.redo:
                continue
            row = run_one(name, tool, args)
            with results.open("a") as out:
                out.write(json.dumps(row) + "\n")
            print(f"  {name:<22} {tool:<14} {' '.join(_cells(row))}", flush=True)
    rows = list({(r["model"], r["tool"]): r for r in stored(results)}.values())  # the last row of each
    (args.out / "zoo.json").write_text(json.dumps({"sizes": sizes, "rows": rows}, indent=1) + "\n")
    table = markdown(rows, sizes)
    (args.out / "zoo.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
