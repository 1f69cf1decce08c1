"""INT8 on ONNX Runtime's CPU provider: does it pay, per model, on this CPU?

Goal (issue 26): int8 at least as fast as fp32 on every model of the zoo and on PP-OCR; a
ResNet-50-shaped net at least 3.3x faster than fp32 on an AVX-512 VNNI CPU; top-1 agreement with fp32
at least 0.99 on the digits-trained models; pruned to 50% FLOPs and quantised, a digits-trained
ResNet-50-shaped net at least 5x faster than the fp32 original with at most 1 point of accuracy lost.

    PYTHONPATH=. python benchmarks/int8.py [--models digits,resnet50,mobilenetv2,digits32,ppocr,zoo-rest]
        [--size 160] [--calib 256] [--calib-random 64] [--calib-method auto] [--rounds 21]
        [--threads 1] [--epochs 8] [--digits-size 32] [--pruned] [--judge-val]
        [--finetune-epochs 2] [--ppocr-dir /work/notes/models] [--cache DIR] [--small] [--json out.json]

Per model three builds with `deploysparse build` (the backend's API): fp32, int8 with every layer
(`--int8-layers all`) and int8 auto (`--int8-layers auto`: the layers measured slower in int8 stay
float), each int8 build choosing its scheme from this CPU's flags (printed above the table) and its
calibration method by held-out agreement (`--calib-method auto`). The three artefacts are then
timed interleaved at batch 1 (backends/timing.py: run by run in alternating order, median of
--rounds) with --threads intra-op threads (1: the issue's condition; run the script under
`taskset -c 0` so that the builds' own timing, which uses every core it may, sees one core too).
Calibration: --calib samples of the digits models' training data (a few hundred, as a user would
calibrate: one fifth is held out to judge the choices, and 64 leave 12, too few to tell 0.99 from 1),
--calib-random random inputs for the random-weight and PP-OCR models. Columns: latency and speed-up over fp32; accuracy
on the validation labels where there are any, else top-1 agreement with fp32 (class scores) and the
cosine of the outputs; the size of the artefact ONNX Runtime loads (fp32: the optimised model; int8:
the portable QDQ model).

Models:
- digits: the bundled digits CNN (1x16x16, trained), judged on the validation and test splits (540
  images, labelled: `held_out`);
- resnet50, mobilenetv2: the zoo's networks with seeded random weights at --size (ResNet-50 at 160
  is the issue's row); random inputs, so only agreement with fp32 means anything;
- digits32: ResNet-50 and MobileNetV2 trained on digits at 32x32 (benchmarks/_digits32.py, cached;
  --digits-size 64: the same digits with more pixel repetition, trained at 64x64), judged on the same
  540 images. At 32x32 ResNet-50's last stage computes on 1x1 maps, where int8's quantise and
  dequantise steps weigh as much as its kernels; at 64x64 it is 2x2 and every layer has four times
  the arithmetic per step;
- ppocr: PP-OCR det/rec/cls from --ppocr-dir at fixed shapes (opsets 11 and 12), random inputs;
- zoo-rest: the zoo's other nets with seeded random weights, ResNet-18 at
  --size, the CIFAR ResNet-20 at 32x32 and the digits MobileNet at 1x16x16.
--judge-val: the int8 builds of the digits models judge their choices (calibration method, layers)
on the validation split, as `run` judges on its --data, and every digits model is then measured on
the test split alone (360 images).
--pruned adds the digits32 ResNet-50 (at --digits-size) pruned to 50% FLOPs (l1, round_to 16), fine-tuned
--finetune-epochs on the training split, and times original fp32 -> compact fp32 -> compact int8.
--small: the digits CNN and a narrow ResNet-50 at 32x32, a handful of samples (a check that it runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from deploysparse import api
from deploysparse.agreement import agreement
from deploysparse.atomic import write_text
from deploysparse.backends import get_backend
from deploysparse.backends.quantize import CpuFeatures, Int8Options, onnxruntime_cpu_scheme
from deploysparse.calibration import model_input_specs
from deploysparse.errors import DeploysparseError
from deploysparse.frontend.torch_export import export_onnx
from deploysparse.modelio import load_model

PPOCR = {  # file, input shape (C, H, W) the model is timed and calibrated at
    "PP-OCRv4 det": ("ch_PP-OCRv4_det_infer.onnx", (3, 320, 320)),
    "PP-OCRv4 rec": ("ch_PP-OCRv4_rec_infer.onnx", (3, 48, 320)),
    "PP-OCR cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (3, 48, 192)),
}
DEFAULT_PPOCR_DIR = Path("/work/notes/models")
DEFAULT_CACHE = Path.home() / ".cache" / "deploysparse" / "bench"


@dataclass
class Case:
    """One model to build three ways: the ONNX file, calibration data, validation data (and labels)."""

    name: str
    onnx_path: Path
    calib: np.ndarray
    val: np.ndarray
    labels: np.ndarray | None = None
    rows: list[dict] = field(default_factory=list)
    judge: np.ndarray | None = None  # inputs the int8 builds judge their choices on (--judge-val)


def build_three(case: Case, args: argparse.Namespace, folder: Path) -> dict[str, Path]:
    """fp32, int8 (all layers) and int8 (auto) artefacts of `case`, built by the backend."""
    backend = get_backend("onnxruntime")
    name = model_input_specs(load_model(case.onnx_path))[0].name
    calib = {name: case.calib}
    built = {"fp32": backend.build(case.onnx_path, folder / "fp32").artifact}
    for layers in ("all", "auto"):
        result = backend.build(
            case.onnx_path,
            folder / f"int8-{layers}",
            "int8",
            calib=calib,
            int8=Int8Options(layers, args.calib_method, judge=_judge(name, case.judge)),
        )
        built[f"int8 {layers}"] = result.artifact
        case.rows.append({"build": layers, "quantization": result.metadata["quantization"]})
    return built


def measure(
    case: Case, models: dict[str, Path], args: argparse.Namespace, fp32_key: str = "fp32"
) -> list[dict]:
    """Latency (interleaved, batch 1), accuracy or agreement with `fp32_key`, and size of each model."""
    backend = get_backend("onnxruntime")
    name = model_input_specs(load_model(next(iter(models.values()))))[0].name
    timer = backend.timer(1, threads=args.threads)
    times = timer.interleaved_ms(list(models.values()), feeds={name: case.val[:1]}, rounds=args.rounds)
    outputs = {label: backend.run(path, {name: case.val}) for label, path in models.items()}
    rows = []
    for (label, path), ms in zip(models.items(), times, strict=True):
        agree = agreement(outputs[fp32_key], outputs[label])
        first = next(iter(outputs[label].values()))
        size = _size(
            path.with_name("model.int8.onnx") if (path.parent / "model.int8.onnx").exists() else path
        )
        rows.append(
            {
                "model": case.name,
                "variant": label,
                "ms": ms,
                "speedup": times[list(models).index(fp32_key)] / ms,
                "accuracy": float(np.mean(first.argmax(1) == case.labels))
                if case.labels is not None
                else None,
                "top1_agreement": agree.top1,
                "cosine": agree.cosine,
                "size_mb": size / 2**20,
            }
        )
    return rows


def _judge(name: str, images: np.ndarray | None) -> dict[str, np.ndarray] | None:
    return None if images is None else {name: images}


def _size(path: Path) -> int:
    return path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + "*.data"))


def digits_case(args: argparse.Namespace, folder: Path) -> Case:
    from deploysparse.frontend.model_source import resolve_model
    from deploysparse.zoo.digits import calibration_set, load_digits_data

    source = resolve_model(
        "deploysparse.zoo.digits:digits_model", input_shape=[1, 1, 16, 16], workdir=folder / "export"
    ).onnx_path
    judge, (images, labels) = evaluation(load_digits_data, args.judge_val)
    return Case(
        "digits CNN (16x16, trained)", Path(source), calibration_set(args.calib), images, labels, judge=judge
    )


def random_case(
    name: str, module: torch.nn.Module, size: int, args: argparse.Namespace, folder: Path, channels: int = 3
) -> Case:
    example = torch.randn(1, channels, size, size)
    path = export_onnx(module.eval(), example, folder / f"{name}.onnx", keep_bn=False)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((args.calib_random + 16, channels, size, size)).astype(np.float32)
    return Case(
        f"{name} ({size}x{size}, random weights)", path, data[: args.calib_random], data[args.calib_random :]
    )


def digits32_case(
    name: str, build: Callable[[], torch.nn.Module], args: argparse.Namespace, folder: Path
) -> Case:
    from benchmarks._digits32 import Training, digits32, trained

    size = args.digits_size
    module = trained(name, build, Training(args.epochs, args.train_subset, size=size), args.cache)
    path = export_onnx(
        module.eval(), torch.randn(1, 3, size, size), folder / f"{name}-digits{size}.onnx", keep_bn=False
    )
    judge, (images, labels) = evaluation(partial(digits32, size=size), args.judge_val)
    return Case(
        f"{name} (digits {size}x{size}, trained)",
        path,
        digits32("train", args.calib, size)[0],
        images,
        labels,
        judge=judge,
    )


def ppocr_cases(args: argparse.Namespace) -> list[Case]:
    cases = []
    rng = np.random.default_rng(0)
    for name, (file, shape) in PPOCR.items():
        path = args.ppocr_dir / file
        if not path.exists():
            print(f"{name}: {path} not found, skipped", file=sys.stderr)
            continue
        n = args.calib_random
        data = rng.uniform(-1, 1, (n + 8, *shape)).astype(np.float32)
        cases.append(Case(f"{name} ({'x'.join(map(str, shape[1:]))})", path, data[:n], data[n:]))
    return cases


def pruned_rows(args: argparse.Namespace, folder: Path) -> list[dict]:
    """The digits32 ResNet-50 pruned to 50% FLOPs, fine-tuned, quantised: original fp32 -> compact fp32
    -> compact int8, timed interleaved."""
    from benchmarks._digits32 import Training, digits32, train, trained
    from deploysparse.torch import apply_plan

    name, size = "ResNet-50", args.digits_size
    training = Training(args.epochs, args.train_subset, size=size)
    module = trained(name, lambda: _resnet50(args), training, args.cache)
    example = torch.randn(1, 3, size, size)
    original = export_onnx(module.eval(), example, folder / "original.onnx", keep_bn=False)
    with_bn = export_onnx(module.eval(), example, folder / "original-bn.onnx")
    result = api.prune(with_bn, criterion="l1", flops_target=0.5, round_to=16)
    compact_module = apply_plan(module, result)
    if args.finetune_epochs:
        train(compact_module, Training(args.finetune_epochs, args.train_subset, size=size))
    compact = export_onnx(compact_module.eval(), example, folder / "compact.onnx", keep_bn=False)
    judge, (images, labels) = evaluation(partial(digits32, size=size), args.judge_val)
    input_name = model_input_specs(load_model(compact))[0].name
    int8 = get_backend("onnxruntime").build(
        compact,
        folder / "compact-int8",
        "int8",
        calib={input_name: digits32("train", args.calib, size)[0]},
        int8=Int8Options("auto", args.calib_method, judge=_judge(input_name, judge)),
    )
    case = Case(
        f"ResNet-50 (digits {size}x{size}) pruned 50% FLOPs + int8", original, images[:0], images, labels
    )
    return measure(
        case,
        {"original fp32": original, "compact fp32": compact, "compact int8": int8.artifact},
        args,
        "original fp32",
    )


def evaluation(
    split: Callable[[str], tuple[np.ndarray, np.ndarray]], judge_val: bool
) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray]]:
    """(judge inputs, (images, labels) to measure on): with --judge-val the int8 builds judge on the
    validation split (180 images, as `run` judges on its --data) and every model is measured on the
    test split alone (360 images none of them trained, calibrated or chose on); else no judge data
    (a fifth of the calibration set is held out) and the measurement on both splits (`held_out`)."""
    if judge_val:
        return split("val")[0], split("test")
    return None, held_out(split)


def held_out(split: Callable[[str], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The validation and test splits together (540 images no model trained or calibrated on): top-1
    agreement of 0.99 is 1.8 images in 180, so the validation split alone cannot tell 0.989 from 0.99."""
    (val, val_labels), (test, test_labels) = split("val"), split("test")
    return np.concatenate([val, test]), np.concatenate([val_labels, test_labels])


def _resnet50(args: argparse.Namespace) -> torch.nn.Module:
    from deploysparse.zoo.resnet import resnet

    return resnet(50, num_classes=10, width=args.width)


def table(rows: list[dict]) -> str:
    lines = [
        "| model | variant | ms (batch 1) | speed-up vs fp32 | accuracy | top-1 agreement | cosine | size MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['ms']:.3f} | {r['speedup']:.2f}x | "
            + (f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "–")
            + " | "
            + (f"{r['top1_agreement']:.4f}" if r["top1_agreement"] is not None else "–")
            + f" | {r['cosine']:.5f} | {r['size_mb']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated (default: all; with --small: digits,resnet50)")
    parser.add_argument("--size", type=int, default=160, help="input size of the random-weight zoo nets")
    parser.add_argument("--calib", type=int, default=256, help="calibration samples of the digits models")
    parser.add_argument(
        "--calib-random", type=int, default=64, help="calibration samples of the random-input models"
    )
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads when timing")
    parser.add_argument("--calib-method", default="auto", choices=("auto", "minmax", "percentile", "entropy"))
    parser.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds")
    parser.add_argument("--epochs", type=int, default=8, help="digits32 training epochs (cached)")
    parser.add_argument(
        "--digits-size", type=int, default=32, help="input size of the digits-trained nets (multiple of 16)"
    )
    parser.add_argument("--train-subset", type=int, help="train on the first N training images only")
    parser.add_argument("--width", type=int, default=64, help="ResNet-50 width (64: standard)")
    parser.add_argument("--pruned", action="store_true", help="add the pruned + int8 digits32 ResNet-50 rows")
    parser.add_argument(
        "--judge-val",
        action="store_true",
        help="digits models: int8 builds judge on the validation split, every model is measured on the test split",
    )
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--ppocr-dir", type=Path, default=DEFAULT_PPOCR_DIR)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--small", action="store_true", help="tiny models and data: a check that it runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.small:
        args.models = args.models or "digits,resnet50"
        args.size, args.calib, args.calib_random, args.rounds, args.width = 32, 16, 16, 3, 8
        args.epochs, args.train_subset, args.finetune_epochs = 1, 64, 1
    args.models = args.models or "digits,resnet50,mobilenetv2,zoo-rest,digits32,ppocr"
    cpu = CpuFeatures.of_this_machine()
    choice = onnxruntime_cpu_scheme(cpu)
    print(f"CPU: {cpu.machine}, int8 flags: {' '.join(cpu.int8_flags()) or 'none'}")
    print(f"scheme: {', '.join(s.describe() for s in choice.candidates)} ({choice.reason})\n")
    rows: list[dict] = []
    builds: dict[str, list[dict]] = {}
    errors: dict[str, str] = {}
    wanted = set(args.models.split(","))
    with tempfile.TemporaryDirectory(prefix="deploysparse-int8-") as tmp:
        folder = Path(tmp)
        cases: list[Case] = []
        if "digits" in wanted:
            cases.append(digits_case(args, folder / "digits"))
        if "resnet50" in wanted:
            from deploysparse.zoo.resnet import resnet

            cases.append(random_case("ResNet-50", resnet(50, 10, width=args.width), args.size, args, folder))
        if "mobilenetv2" in wanted:
            from deploysparse.zoo.mobilenet import mobilenet_v2

            cases.append(random_case("MobileNetV2", mobilenet_v2(10), max(args.size, 32), args, folder))
        if "zoo-rest" in wanted:  # the zoo's other nets, seeded random weights, at their own sizes
            from deploysparse.zoo.digits import build_digits_mobilenet
            from deploysparse.zoo.resnet import cifar_resnet, resnet

            cases.append(random_case("ResNet-18", resnet(18, 10), args.size, args, folder))
            cases.append(random_case("CIFAR ResNet-20", cifar_resnet(20), 32, args, folder))
            torch.manual_seed(0)  # the zoo's builder draws from the global generator
            digits_mobilenet = build_digits_mobilenet()
            cases.append(random_case("digits MobileNet", digits_mobilenet, 16, args, folder, channels=1))
        if "digits32" in wanted:
            from deploysparse.zoo.mobilenet import mobilenet_v2

            cases.append(digits32_case("ResNet-50", lambda: _resnet50(args), args, folder))
            cases.append(digits32_case("MobileNetV2", lambda: mobilenet_v2(10), args, folder))
        if "ppocr" in wanted:
            cases.extend(ppocr_cases(args))
        for i, case in enumerate(cases):
            try:
                built = build_three(case, args, folder / f"case{i}")
            except DeploysparseError as exc:  # one model that does not build is a line, not the end
                errors[case.name] = str(exc)
                print(f"{case.name}: {exc}", file=sys.stderr, flush=True)
                continue
            rows.extend(measure(case, built, args))
            builds[case.name] = case.rows
            print(f"{case.name}: done", file=sys.stderr, flush=True)
        if args.pruned:
            rows.extend(pruned_rows(args, folder / "pruned"))
    print(table(rows))
    if args.json:
        write_text(
            args.json,
            json.dumps({"cpu": cpu.to_json(), "rows": rows, "builds": builds}, indent=2, default=str),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
