"""torchvision's ConvNeXt-T, ViT-B/32 and Swin-T pruned end to end: prune, apply_plan, build, validate.

Goal (issue 25): the families whose channels live on the last axis (NHWC maps between two Permutes,
[N, tokens, C]) lose channels for real, and every stage after the prune agrees with it.

    PYTHONPATH=$PWD python benchmarks/torchvision_blocks.py [--models convnext_tiny,vit_b_32,swin_t]
        [--ratio 0.3] [--round-to 16] [--size 224] [--exporter auto] [--keep FOLDER]

Per model (random weights, seeded, a zero-initialised Linear made random so the outputs are not all
0: what can go and whether the stages agree, not accuracy):
`export_onnx` as `deploysparse prune module:attr` does it (exporter "auto": the TorchScript exporter,
dynamo where it fails, as for ViT's fused attention), `api.prune(criterion="l1", ratio=...)`,
`deploysparse.torch.apply_plan` (which runs the compact module against the compact ONNX), the ONNX
Runtime build of the compact model, and `validate` twice: the built model against the compact ONNX
(default fp32 tolerances: the build must not change the function) and the compact ONNX against the
original (tolerances off: the output change the prune made, without fine-tuning). One markdown table:
channels removed, params and MACs kept, both errors, and the ops that pin the largest groups left.

torchvision is not a dependency of deploysparse: install it beside it (`pip install --no-deps
torchvision`). A wheel built for another torch (a CUDA build on the CPU torch) cannot load its compiled
ops; the models need none of them, and the two op schemas torchvision's import registers fake kernels
for are defined here so that it imports.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

MODELS = ("convnext_tiny", "vit_b_32", "swin_t")
_TORCHVISION_OPS: list[torch.library.Library] = []  # kept alive: a Library's definitions die with it


@functools.cache
def torchvision_models():
    """`torchvision.models`, importable even when torchvision's compiled ops do not load on this torch."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise SystemExit("error: torchvision is not installed (pip install --no-deps torchvision)")
    compiled = next(Path(spec.origin).parent.glob("_C*"), None)
    try:
        if compiled is None:
            raise OSError("no compiled ops")
        torch.ops.load_library(str(compiled))
    except (OSError, RuntimeError):
        ops = torch.library.Library("torchvision", "DEF")
        ops.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        ops.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_OPS.append(ops)
    import torchvision.models

    return torchvision.models


@dataclass
class Row:
    """One model's results; `error` names the stage that failed."""

    model: str
    groups: str = ""
    removed: int = 0
    params_kept: float = float("nan")
    macs_kept: float = float("nan")
    module_vs_onnx: float = float("nan")
    built_passed: bool = False
    output_rel: float = float("nan")
    output_cosine: float = float("nan")
    pins: list[str] = field(default_factory=list)
    error: str | None = None


def run_model(name: str, args: argparse.Namespace, folder: Path) -> Row:
    from deploysparse import api
    from deploysparse.backends import get_backend
    from deploysparse.backends.onnxruntime.intermediates import session
    from deploysparse.frontend.torch_export import export_onnx
    from deploysparse.modelio import save_model
    from deploysparse.torch import apply_plan
    from deploysparse.validate import validate

    row = Row(name)
    stage = "export"
    try:
        torch.manual_seed(0)
        module = getattr(torchvision_models(), name)().eval()
        for layer in module.modules():  # ViT's head starts at 0: every output would be 0 whatever the prune
            if isinstance(layer, torch.nn.Linear) and not layer.weight.any():
                torch.nn.init.normal_(layer.weight, std=0.02)
        rng = np.random.default_rng(0)
        example = torch.from_numpy(rng.standard_normal((2, 3, args.size, args.size)).astype(np.float32))
        original = export_onnx(module, example, folder / name / "model.onnx", exporter=args.exporter)
        stage = "prune"
        result = api.prune(str(original), criterion="l1", ratio=args.ratio, round_to=args.round_to)
        summary = result.summary
        compact = save_model(result.model, folder / name / "compact.onnx")
        prunable = [g for g in result.graph.groups if g.prunable]
        row.groups = f"{sum(1 for g in summary['groups'] if g['removed'])} of {len(prunable)}"
        row.removed = summary["channels_removed"]
        row.params_kept = summary["params_after"] / summary["params_before"]
        row.macs_kept = summary["flops_after"] / summary["flops_before"]
        row.pins = _largest_pins(result.graph)
        stage = "apply_plan"
        compact_module = apply_plan(module, result)
        x = rng.standard_normal((2, 3, args.size, args.size)).astype(np.float32)
        want = session(result.model).run(None, {"input": x})[0]
        with torch.no_grad():
            got = compact_module(torch.from_numpy(x)).numpy()
        row.module_vs_onnx = float(np.abs(got - want).max() / np.abs(want).max())
        stage = "build"
        built = get_backend("onnxruntime").build(compact, folder / name / "built")
        stage = "validate"
        data = {"input": rng.standard_normal((4, 3, args.size, args.size)).astype(np.float32)}
        row.built_passed = validate(compact, built.artifact, data).passed
        off = {key: None for key in ("atol", "rtol", "min_cosine", "min_top1", "max_accuracy_drop")}
        change = validate(original, compact, data, **off)
        row.output_rel, row.output_cosine = change.max_rel_err, change.cosine
    except Exception as exc:  # a benchmark reports the failing stage and goes on with the next model
        row.error = f"{stage}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return row


def _largest_pins(ga) -> list[str]:
    """The ops that pin the most channels, with their reasons: 'op: reason (channels)'."""
    held: Counter[str] = Counter()
    for space in ga.pinned:
        if space.op != "graph":
            held[f"{space.op}: {space.reason}"] += ga.group(space.group).size
    return [f"{what} ({count})" for what, count in held.most_common(3)]


def print_table(rows: list[Row]) -> None:
    print(
        "| model | groups cut | channels removed | params kept | MACs kept | module vs ONNX "
        "| built = compact | output change (max rel, cosine) | largest pins |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.error:
            print(f"| {r.model} | failed at {r.error} |||||||||")
            continue
        print(
            f"| {r.model} | {r.groups} | {r.removed} | {r.params_kept:.1%} | {r.macs_kept:.1%} "
            f"| {r.module_vs_onnx:.1e} | {'yes' if r.built_passed else 'NO'} "
            f"| {r.output_rel:.3g}, {r.output_cosine:.4f} | {'; '.join(r.pins)} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="torchvision model names, comma separated")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--round-to", type=int, default=None, help="deploysparse's default when left out")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "legacy"])
    parser.add_argument("--keep", type=Path, help="write the models here instead of a temporary folder")
    args = parser.parse_args(argv)
    if args.round_to is None:
        from deploysparse.budget import DEFAULT_ROUND_TO

        args.round_to = DEFAULT_ROUND_TO
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        rows = [run_model(name, args, folder) for name in args.models.split(",")]
    print_table(rows)
    return 1 if any(r.error or not r.removed or not r.built_passed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
