"""Every deploysparse command on real trained ONNX exports, as a new user would run them.

    python benchmarks/real_exports.py [--models FOLDER] [--only NAME ...] [--commands bench,run]
        [--shape NAME=1x3x640x640 ...] [--timeout 900] [--keep FOLDER]

For each `.onnx` in FOLDER (default /work/notes/models: PaddleOCR det/rec/cls, a PP-LCNet
classifier, a PicoDet layout detector, MTCNN, an OCR CNN+LSTM, extracted from the wheels that ship
them) it runs, as separate processes: `analyze`, `prune --criterion dead`, `bench`, `build
--precision fp32`, `build --precision int8 --calib`, `validate` (original vs the dead-filter compact
model) and `run x86-cpu-onnxruntime`, and prints one markdown row per model: its opset, the shape
used, and each command's outcome and wall time. Failures are numbered and their one-line messages
listed under the table.

"At most --input-shape": a model whose dims past the batch are all static gets no shape option at
all. A model with dynamic dims gets `--input-shape` on the commands that have no data to read a
shape from (analyze, prune, bench); build, validate and run get random data at that shape
(8 samples, `.npy`) and must take the shape from it. The shape is the one the model's package feeds
it (KNOWN_SHAPES), else each dynamic dim set to 1 (batch) or 224; `--shape NAME=SHAPE` overrides.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

DEFAULT_MODELS = Path("/work/notes/models")
SAMPLES = 8
# The input size each model's package feeds it (rapidocr: det 640 side, rec height 48 at width 320,
# cls 48x192; MTCNN's P-Net at a 48x48 crop; ddddocr at width 256).
KNOWN_SHAPES = {
    "ch_PP-OCRv4_det_infer": (1, 3, 640, 640),
    "PP-OCRv6_det_small": (1, 3, 640, 640),
    "ch_PP-OCRv4_rec_infer": (1, 3, 48, 320),
    "PP-OCRv6_rec_small": (1, 3, 48, 320),
    "ch_ppocr_mobile_v2.0_cls_infer": (1, 3, 48, 192),
    "ch_ppocr_mobile_v2.0_cls_mobile": (1, 3, 48, 192),
    "pnet": (1, 48, 48, 3),
    "common_old": (1, 1, 64, 256),
}
COMMANDS = ("analyze", "prune", "bench", "build fp32", "build int8", "validate", "run")


@dataclass
class Outcome:
    code: int
    seconds: float
    message: str = ""

    def cell(self, notes: list[str]) -> str:
        if self.code == 0:
            return f"ok {self.seconds:.1f} s"
        notes.append(self.message)
        return f"exit {self.code} [{len(notes)}] {self.seconds:.1f} s"


@dataclass
class ModelRow:
    name: str
    opset: str
    declared: str
    shape: tuple[int, ...]
    shape_given: bool  # whether --input-shape was needed (dynamic dims past the batch)
    outcomes: dict[str, Outcome] = field(default_factory=dict)


def declared_inputs(model: onnx.ModelProto) -> list[tuple[str, list[int | None]]]:
    initializers = {init.name for init in model.graph.initializer}
    return [
        (value.name, [d.dim_value if d.dim_value > 0 else None for d in value.type.tensor_type.shape.dim])
        for value in model.graph.input
        if value.name not in initializers
    ]


def shape_for(name: str, dims: list[int | None], override: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    if name in override:
        return override[name]
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name]
    return tuple(d if d is not None else (1 if axis == 0 else 224) for axis, d in enumerate(dims))


def run_cli(argv: list[str], folder: Path, timeout: float) -> Outcome:
    """One deploysparse command as its own process: exit code, wall time, the last error line."""
    command = [sys.executable, "-m", "deploysparse", *argv]
    start = time.perf_counter()
    try:  # not run in a source tree: `python -m` would import the deploysparse found there
        done = subprocess.run(command, capture_output=True, text=True, cwd=folder, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Outcome(124, time.perf_counter() - start, f"{argv[0]}: no result after {timeout:.0f} s")
    seconds = time.perf_counter() - start
    if done.returncode == 0:
        return Outcome(0, seconds)
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    message = (errors or lines or ["(no output)"])[-1]
    return Outcome(done.returncode, seconds, f"{' '.join(argv[:1])}: {message[:400]}")


def run_model(
    path: Path, work: Path, override: dict[str, tuple[int, ...]], timeout: float, commands: list[str]
) -> ModelRow:
    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    inputs = declared_inputs(model)
    if len(inputs) != 1:
        raise SystemExit(f"{path}: {len(inputs)} inputs; this script feeds single-input models")
    input_name, dims = inputs[0]
    name = path.stem
    shape = shape_for(name, dims, override)
    dynamic = any(d is None for d in dims[1:])
    row = ModelRow(
        name=name,
        opset=str(opset),
        declared=f"{input_name}: [{','.join('?' if d is None else str(d) for d in dims)}]",
        shape=shape,
        shape_given=dynamic,
    )
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data.npy"
    np.save(data, np.random.default_rng(0).standard_normal((SAMPLES, *shape[1:])).astype(np.float32))
    shape_option = ["--input-shape", "x".join(map(str, shape))] if dynamic else []
    compact = folder / "compact.onnx"
    argvs = {
        "analyze": ["analyze", str(path), *shape_option, "--json"],
        "prune": ["prune", str(path), "--criterion", "dead", *shape_option, "-o", str(compact), "--json"],
        "bench": ["bench", str(path), *shape_option, "--iters", "20", "--json"],
        "build fp32": ["build", str(path), "--precision", "fp32", "-o", str(folder / "fp32")],
        "build int8": [
            "build",
            str(path),
            "--precision",
            "int8",
            "--calib",
            str(data),
            "-o",
            str(folder / "int8"),
        ],
        "validate": ["validate", str(path), str(compact), "--data", str(data)],
        "run": [
            "run",
            "x86-cpu-onnxruntime",
            "--model",
            str(path),
            "--calib",
            str(data),
            "-o",
            str(folder / "run"),
        ],
    }
    for label, argv in argvs.items():
        if label not in commands:
            continue
        if label == "validate" and not compact.exists():
            row.outcomes[label] = Outcome(-1, 0.0, "validate: prune wrote no compact model")
            continue
        print(f"  {name}: {label} ...", file=sys.stderr, flush=True)
        row.outcomes[label] = run_cli(argv, folder, timeout)
    return row


def table(rows: list[ModelRow]) -> str:
    notes: list[str] = []
    lines = [
        "| model | opset | inputs | shape used | " + " | ".join(COMMANDS) + " |",
        "| --- | ---: | --- | --- | " + " | ".join("---" for _ in COMMANDS) + " |",
    ]
    for row in rows:
        shape = "x".join(map(str, row.shape)) + (" (--input-shape)" if row.shape_given else " (model)")
        cells = [row.outcomes[c].cell(notes) if c in row.outcomes else "-" for c in COMMANDS]
        lines.append(f"| {row.name} | {row.opset} | {row.declared} | {shape} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(f"[{i}] {note}" for i, note in enumerate(notes, start=1))
    return "\n".join(lines)


def parse_override(values: list[str]) -> dict[str, tuple[int, ...]]:
    override = {}
    for value in values:
        name, _, dims = value.partition("=")
        override[name] = tuple(int(d) for d in dims.lower().replace(",", "x").split("x"))
    return override


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="folder of .onnx files")
    parser.add_argument("--only", nargs="*", default=[], help="model names (file stems) to run")
    parser.add_argument("--shape", action="append", default=[], help="NAME=1x3x640x640 (repeatable)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per command")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep its outputs")
    parser.add_argument(
        "--commands", default=",".join(COMMANDS), help=f"comma-separated subset of: {', '.join(COMMANDS)}"
    )
    args = parser.parse_args(argv)
    commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    unknown = [c for c in commands if c not in COMMANDS]
    if unknown:
        raise SystemExit(f"--commands: unknown {', '.join(unknown)}; choose from {', '.join(COMMANDS)}")
    override = parse_override(args.shape)
    paths = sorted(args.models.glob("*.onnx"))
    if args.only:
        paths = [p for p in paths if p.stem in args.only]
    if not paths:
        raise SystemExit(f"{args.models}: no .onnx files to run")
    seen: dict[str, str] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="real-exports-") as tmp:
        work = args.keep or Path(tmp)
        for path in paths:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in seen:
                print(f"{path.name}: the same bytes as {seen[digest]}, skipped", file=sys.stderr)
                continue
            seen[digest] = path.name
            rows.append(run_model(path, work, override, args.timeout, commands))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
