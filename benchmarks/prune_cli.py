"""`deploysparse prune --criterion dead` on a ResNet-50-sized ONNX, as a whole process, against load + save.

Goal (issue: latency): the CLI's wall time at most 3x that of a process that only loads and saves the
same model with onnx (the floor any tool that rewrites the file pays).

    PYTHONPATH=. python benchmarks/prune_cli.py [--model resnet50] [--repeats 3] [--keep FOLDER]
        [--profile]

The model is a torchvision-layout ResNet from `deploysparse.zoo.resnet` with seeded random weights,
exported once with BatchNorm folded (224x224, inline weights). Each repeat runs three fresh Python
processes in rotating order, so a shared machine's load falls on all of them alike:
`python -c` that imports onnx, loads and saves the model (the floor); `deploysparse prune MODEL
--criterion dead -o OUT` (the CLI as a user runs it); and `python -c "import deploysparse.cli"`
plus the modules `prune` imports (import time alone). The table gives each one's median wall time
and the ratio to the floor. `--profile` also runs the CLI once under cProfile and prints the 25
functions with the most cumulative time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL = 3.0

LOAD_SAVE = "import sys, onnx; m = onnx.load(sys.argv[1]); onnx.save(m, sys.argv[2])"
IMPORTS = "import deploysparse.cli, deploysparse.api, deploysparse.modelio"


def export(name: str, folder: Path) -> Path:
    """Export the zoo model with seeded random weights (BatchNorm folded, as a deployment ships it)."""
    import torch

    from deploysparse.frontend.torch_export import export_onnx
    from deploysparse.zoo.resnet import resnet

    torch.manual_seed(0)
    depth = int(name.removeprefix("resnet"))
    path = folder / f"{name}.onnx"
    export_onnx(resnet(depth).eval(), torch.randn(1, 3, 224, 224), path, keep_bn=False)
    return path


def commands(model: Path, folder: Path) -> dict[str, list[str]]:
    cli = str(Path(sys.executable).with_name("deploysparse"))
    return {
        "load + save (onnx)": [sys.executable, "-c", LOAD_SAVE, str(model), str(folder / "copy.onnx")],
        "prune --criterion dead": [
            cli,
            "prune",
            str(model),
            "--criterion",
            "dead",
            "-o",
            str(folder / "dead.onnx"),
        ],
        "import deploysparse (CLI modules)": [sys.executable, "-c", IMPORTS],
    }


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed:\n{done.stderr[-2000:]}")
    return seconds


def profile_cli(argv: list[str], folder: Path) -> None:
    stats = folder / "prune.prof"
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(stats), "-m", "deploysparse", *argv[1:]],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    import pstats

    pstats.Stats(str(stats)).sort_stats("cumulative").print_stats(25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", help="resnet18 | resnet50 | resnet101")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="work in this folder (and keep the exported model)")
    parser.add_argument("--profile", action="store_true", help="cProfile the CLI once")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="prune-cli-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        model = folder / f"{args.model}.onnx"
        if not model.exists():
            export(args.model, folder)
        size_mb = model.stat().st_size / 1e6
        runs = commands(model, folder)
        seconds: dict[str, list[float]] = {label: [] for label in runs}
        labels = list(runs)
        for r in range(args.repeats):
            for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
                seconds[label].append(time_once(runs[label]))
        floor = statistics.median(seconds[labels[0]])
        print(f"{args.model}: {size_mb:.0f} MB, {args.repeats} repeats, median wall time per process")
        print("| process | median s | runs s | / load + save |")
        print("| --- | ---: | --- | ---: |")
        for label, values in seconds.items():
            median = statistics.median(values)
            runs_text = ", ".join(f"{v:.2f}" for v in values)
            print(f"| {label} | {median:.2f} | {runs_text} | {median / floor:.2f}x |")
        ratio = statistics.median(seconds["prune --criterion dead"]) / floor
        print(f"goal: prune <= {GOAL}x load + save: {'met' if ratio <= GOAL else 'not met'} ({ratio:.2f}x)")
        if args.profile:
            profile_cli(runs["prune --criterion dead"], folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
