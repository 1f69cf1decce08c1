"""GPU figures in one go: pruned ResNet-50 and MobileNetV2 as torch modules, FP16, channels_last.

For each zoo model (seeded random weights: latency does not depend on the values) and each FLOPs
target, l1 pruning with kept counts rounded to 8 gives a plan; `deploysparse.torch.apply_plan`
replays it on the nn.Module. On the device, in the chosen precision and channels_last, the original
and every compact module run interleaved (round-robin, --rounds x --iters timed runs each after
--warmup) at each batch size; reported: p50 latency, speed-up, FLOPs kept and the realised fraction
of the ideal speed-up (speed-up x FLOPs kept; 1.0 = latency fell as much as the FLOPs), and the
largest output difference between each compact module and the masked original (the original with
the removed channels zeroed, which must compute the same function) on the same random batch. Each
compact ONNX is also checked with `deploysparse build --backend tensorrt --check-only`.

    PYTHONPATH=. python benchmarks/gpu.py [--device cuda|cpu] [--models resnet50,mobilenetv2]
        [--size 224] [--width 1.0] [--targets 0.7,0.5] [--round-to 8] [--batches 1,8,32]
        [--dtype fp16|fp32] [--warmup 10] [--iters 50] [--rounds 3] [--json out.json]
        [--prepare-only DIR | --from DIR] [--trt-sparsity [--trtexec PATH] [--trt-iters 200]]

Two phases, because a lent GPU machine may have only torch, onnx and onnxruntime: *prepare* (export,
analyse, prune, TensorRT op check: needs deploysparse's CPU dependencies, e.g. scipy, click) and
*measure* (needs only torch, numpy, onnx and this checkout). Without --prepare-only/--from both run
here. On a GPU machine without those dependencies: run `--prepare-only DIR` on a CPU machine with
the same --models/--size/--width/--targets, carry DIR over (a few MB: kept indices, not weights),
then `--from DIR --device cuda`. Timing on CUDA uses CUDA events around each forward and a
synchronisation after it; on CPU, `time.perf_counter`.

`--device cpu --size 32 --width 0.125 --batches 1,2 --iters 3` runs end to end in seconds (the test).

`--trt-sparsity` adds TensorRT engines, 2:4 sparse against dense. *prepare* writes two fp16 TensorRT
artefacts of every compact model (`deploysparse build --backend tensorrt --precision fp16
--emit-command`, one with `--sparsity 2:4`) into DIR/trt/, each with the trtexec line that builds its
engine and the change 2:4 made to the outputs (measured on ONNX Runtime, dense execution). *measure*
runs those emitted lines with the device's trtexec (`--trtexec`, default the one on PATH), then
times each engine with `trtexec --loadEngine` at every batch size, and reports the median GPU compute
time, dense and sparse, and the sparse speed-up. It needs only trtexec and this checkout; the
artefacts carry their weights (fp16: half the model's size, twice). TensorRT times sparse kernels
against dense ones and keeps the faster, so a layer too small to gain stays dense in both engines.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deploysparse.torch import apply_plan  # noqa: E402  (torch, numpy, onnx only)
from deploysparse.zoo.mobilenet import mobilenet_v2  # noqa: E402
from deploysparse.zoo.resnet import resnet  # noqa: E402

MODELS: dict[str, Callable[[float], nn.Module]] = {
    "resnet50": lambda width: resnet(50, width=max(1, round(64 * width))),
    "mobilenetv2": lambda width: mobilenet_v2(width_mult=width),
}
PLAN_FILE = "prepared.json"


@dataclass
class Record:
    """What `apply_plan` reads (a SurgeryResult's record) plus the masked original and the costs."""

    slices: dict[str, dict[int, np.ndarray]]
    values: dict[str, np.ndarray]
    biases: dict[str, np.ndarray]
    zeroed: dict[str, tuple[int, np.ndarray]]  # masked original: tensor -> (axis, rows set to zero)
    model: onnx.ModelProto | None = None  # compact graph without weights (conv groups for apply_plan)

    def to_json(self) -> dict:
        return {
            "slices": {n: {str(a): k.tolist() for a, k in axes.items()} for n, axes in self.slices.items()},
            "values": {
                n: {"shape": list(v.shape), "data": v.reshape(-1).tolist()} for n, v in self.values.items()
            },
            "biases": {n: v.tolist() for n, v in self.biases.items()},
            "zeroed": {n: [axis, rows.tolist()] for n, (axis, rows) in self.zeroed.items()},
            "graph": self.model.SerializeToString().hex() if self.model is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict) -> Record:
        return cls(
            slices={
                n: {int(a): np.asarray(k, dtype=np.int64) for a, k in axes.items()}
                for n, axes in data["slices"].items()
            },
            values={
                n: np.asarray(v["data"], dtype=np.float32).reshape(v["shape"])
                for n, v in data["values"].items()
            },
            biases={n: np.asarray(v, dtype=np.float32) for n, v in data["biases"].items()},
            zeroed={
                n: (int(axis), np.asarray(rows, dtype=np.int64)) for n, (axis, rows) in data["zeroed"].items()
            },
            model=onnx.ModelProto.FromString(bytes.fromhex(data["graph"])) if data["graph"] else None,
        )


@dataclass
class Compact:
    label: str
    target: float
    flops_kept: float
    params: int
    record: Record
    trt_check: dict
    # --trt-sparsity: the dense and 2:4 TensorRT artefacts (folders relative to DIR) and the emitted
    # build lines, the input fed, and what 2:4 did (layers made sparse, output change on ONNX Runtime)
    trt: dict | None = None


@dataclass
class Prepared:
    model: str
    size: int
    width: float
    params: int
    flops: int
    compacts: list[Compact] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# prepare: export, prune, check (deploysparse's CPU dependencies)
# ---------------------------------------------------------------------------------------------


def prepare(
    name: str,
    size: int,
    width: float,
    targets: list[float],
    round_to: int,
    folder: Path,
    trt_batch: int | None = None,
) -> Prepared:
    """Export the zoo model with BN kept (names = module names), prune it to each target, record; with
    `trt_batch`, write each compact model's dense and 2:4 TensorRT artefacts (batches 1..trt_batch)."""
    from deploysparse import api
    from deploysparse.frontend.torch_export import export_onnx
    from deploysparse.graph.masking import zero_channels
    from deploysparse.graph.shapes import skeleton
    from deploysparse.modelio import save_model

    module = MODELS[name](width).eval()
    onnx_path = folder / f"{name}.onnx"
    export_onnx(module, torch.randn(1, 3, size, size), onnx_path, keep_bn=True)
    prepared = Prepared(name, size, width, 0, 0)
    for target in targets:
        result = api.prune(onnx_path, criterion="l1", flops_target=target, round_to=round_to)
        s = result.summary
        prepared.params, prepared.flops = s["params_before"], s["flops_before"]
        compact_path = save_model(result.model, folder / f"{name}-l1-{target:g}.onnx")
        masked = zero_channels(result.graph, result.plan)
        record = Record(
            slices=dict(result.surgery.slices),
            values=dict(result.surgery.values),
            biases=dict(result.surgery.biases),
            zeroed=_zeroed_rows(result.graph.model, masked),
            model=_nodes_only(skeleton(result.model)),
        )
        prepared.compacts.append(
            Compact(
                label=f"l1 {target:.0%} FLOPs, round-to {round_to}",
                target=target,
                flops_kept=s["flops_after"] / s["flops_before"],
                params=s["params_after"],
                record=record,
                trt_check=trt_check_only(compact_path),
                trt=trt_artefacts(compact_path, folder, trt_batch) if trt_batch else None,
            )
        )
    return prepared


def _zeroed_rows(original: onnx.ModelProto, masked: onnx.ModelProto) -> dict[str, tuple[int, np.ndarray]]:
    """The masked original as (axis, rows zeroed) per tensor; raises if a change is not whole rows."""
    from onnx import numpy_helper

    before = {init.name: init for init in original.graph.initializer}
    zeroed = {}
    for init in masked.graph.initializer:
        new = numpy_helper.to_array(init)
        old = numpy_helper.to_array(before[init.name])
        differ = new != old
        if not differ.any():
            continue
        rows = np.flatnonzero(differ.reshape(differ.shape[0], -1).any(axis=1))
        check = old.copy()
        check[rows] = 0
        if not np.array_equal(check, new):
            raise RuntimeError(f"masked original changes {init.name} in more than whole rows of axis 0")
        zeroed[init.name] = (0, rows)
    return zeroed


def _nodes_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph's nodes (attributes included) without any weight: all apply_plan needs of it."""
    out = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import)
    out.graph.node.extend(model.graph.node)
    return out


def deploysparse_json(args: list[str]) -> tuple[int, dict]:
    """`deploysparse ARGS --json` in-process: its exit code and the JSON it printed."""
    import contextlib
    import io

    from deploysparse.cli import main as cli

    out = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out):
        try:
            cli([*args, "--json"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, json.loads(out.getvalue())


def trt_check_only(onnx_path: Path) -> dict:
    """`deploysparse build COMPACT --backend tensorrt --check-only --json` (no TensorRT needed), in-process."""
    code, report = deploysparse_json(["build", str(onnx_path), "--backend", "tensorrt", "--check-only"])
    return {"ok": bool(report["ok"]) and code == 0, "exit_code": code, "report": report}


def trt_artefacts(compact_path: Path, folder: Path, batch: int) -> dict:
    """The dense and the 2:4 fp16 TensorRT artefacts of one compact model, for batches 1..`batch`,
    each with its emitted trtexec line (`build --emit-command`, no TensorRT needed)."""
    model = onnx.load(str(compact_path), load_external_data=False)
    graph_input = model.graph.input[0]
    name = graph_input.name
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim][1:]
    shapes = ",".join("x".join(map(str, [n, *dims])) for n in (1, batch, batch))
    out: dict = {"input": name, "shape": dims}
    for mode, extra in (("dense", []), ("sparse", ["--sparsity", "2:4"])):
        target = folder / "trt" / compact_path.stem / mode
        args = ["build", str(compact_path), "--backend", "tensorrt", "--precision", "fp16", "--emit-command"]
        code, built = deploysparse_json([*args, "--shapes", f"{name}:{shapes}", *extra, "-o", str(target)])
        if code != 0:
            raise RuntimeError(f"{compact_path}: the {mode} TensorRT artefact failed (exit {code})")
        out[mode] = {
            "folder": target.relative_to(folder).as_posix(),
            "trtexec": built["metadata"]["commands"]["trtexec"],
        }
        if mode == "sparse":
            sparsity = built["metadata"]["sparsity"]
            out["sparse_layers"] = len(sparsity["layers_sparse"])
            out["dense_layers"] = len(sparsity["layers_dense"])
            out["change"] = sparsity["change"]
    return out


def save_prepared(items: list[Prepared], folder: Path) -> Path:
    data = [
        {
            "model": p.model,
            "size": p.size,
            "width": p.width,
            "params": p.params,
            "flops": p.flops,
            "compacts": [
                {
                    "label": c.label,
                    "target": c.target,
                    "flops_kept": c.flops_kept,
                    "params": c.params,
                    "trt_check": c.trt_check,
                    "trt": c.trt,
                    "record": c.record.to_json(),
                }
                for c in p.compacts
            ],
        }
        for p in items
    ]
    path = folder / PLAN_FILE
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def load_prepared(folder: Path) -> list[Prepared]:
    items = []
    for p in json.loads((folder / PLAN_FILE).read_text(encoding="utf-8")):
        compacts = [
            Compact(
                c["label"],
                c["target"],
                c["flops_kept"],
                c["params"],
                Record.from_json(c["record"]),
                c["trt_check"],
                c.get("trt"),
            )
            for c in p["compacts"]
        ]
        items.append(Prepared(p["model"], p["size"], p["width"], p["params"], p["flops"], compacts))
    return items


# ---------------------------------------------------------------------------------------------
# measure: torch only
# ---------------------------------------------------------------------------------------------


def masked_original(module: nn.Module, zeroed: dict[str, tuple[int, np.ndarray]]) -> nn.Module:
    """A copy of `module` with the removed channels zeroed at their producers (what surgery must equal)."""
    masked = copy.deepcopy(module)
    tensors = dict(masked.named_parameters())
    tensors.update(dict(masked.named_buffers()))
    missing = sorted(set(zeroed) - set(tensors))
    if missing:
        raise RuntimeError(f"the masked original names tensors the module lacks: {missing[:5]}")
    with torch.no_grad():
        for name, (axis, rows) in zeroed.items():
            tensors[name].index_fill_(axis, torch.as_tensor(rows, dtype=torch.long), 0.0)
    return masked


class Clock:
    """Milliseconds of one forward: CUDA events with a synchronisation on GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def time(self, module: nn.Module, x: torch.Tensor) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            module(x)
            end.record()
            torch.cuda.synchronize()
            return float(start.elapsed_time(end))
        begin = time.perf_counter()
        module(x)
        return (time.perf_counter() - begin) * 1e3


def measure(item: Prepared, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Interleaved p50 latency of original and compact modules per batch, and compact-vs-masked error."""
    original = MODELS[item.model](item.width).eval()
    compacts = [apply_plan(original, c.record, verify=False).eval() for c in item.compacts]
    masked = [masked_original(original, c.record.zeroed).eval() for c in item.compacts]

    def place(m: nn.Module) -> nn.Module:
        return m.to(device=device, dtype=dtype, memory_format=torch.channels_last)

    modules = [place(original), *(place(m) for m in compacts)]
    masked = [place(m) for m in masked]
    clock = Clock(device)
    generator = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        for batch in args.batches:
            x = torch.randn(batch, 3, item.size, item.size, generator=generator)
            x = x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
            for _ in range(args.warmup):
                for m in modules:
                    m(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times: list[list[float]] = [[] for _ in modules]
            for i in range(args.rounds * args.iters):
                for j in np.roll(np.arange(len(modules)), i):
                    times[j].append(clock.time(modules[j], x))
            p50 = [statistics.median(t) for t in times]
            errors = []
            for compact, reference in zip(compacts, masked, strict=True):
                want, got = reference(x).float(), place(compact)(x).float()
                errors.append((float((want - got).abs().max()), float(want.abs().max())))
            rows.append({"batch": batch, "p50_ms": p50, "errors": errors})
    return rows


def results(item: Prepared, rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        original_ms = row["p50_ms"][0]
        out.append(
            {
                "model": item.model,
                "variant": "original",
                "batch": row["batch"],
                "p50_ms": original_ms,
                "flops_kept": 1.0,
                "params": item.params,
            }
        )
        for c, ms, (err, scale) in zip(item.compacts, row["p50_ms"][1:], row["errors"], strict=True):
            speedup = original_ms / ms
            out.append(
                {
                    "model": item.model,
                    "variant": c.label,
                    "batch": row["batch"],
                    "p50_ms": ms,
                    "flops_kept": c.flops_kept,
                    "params": c.params,
                    "speedup": speedup,
                    "realised": speedup * c.flops_kept,
                    "max_abs_err_vs_masked": err,
                    "output_scale": scale,
                    "trt_check_only": c.trt_check,
                }
            )
    return out


def table(rows: list[dict]) -> str:
    head = [
        "model",
        "variant",
        "batch",
        "FLOPs kept",
        "p50 ms",
        "speed-up",
        "realised",
        "max err vs masked",
        "TRT check",
    ]
    cells = []
    for r in rows:
        compact = "speedup" in r
        trt = r.get("trt_check_only") or {}
        cells.append(
            [
                r["model"],
                r["variant"],
                str(r["batch"]),
                f"{r['flops_kept']:.3f}",
                f"{r['p50_ms']:.3f}",
                f"{r['speedup']:.2f}x" if compact else "",
                f"{r['realised']:.2f}" if compact else "",
                f"{r['max_abs_err_vs_masked']:.2e} (of {r['output_scale']:.2g})" if compact else "",
                ("ok" if trt.get("ok") else "FAILS") if compact else "",
            ]
        )
    return markdown(head, cells)


def markdown(head: list[str], cells: list[list[str]]) -> str:
    """A Markdown table: the header row, the separator, one row per list of cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


# ---------------------------------------------------------------------------------------------
# measure, TensorRT: the emitted trtexec lines, then trtexec timing (trtexec and this checkout only)
# ---------------------------------------------------------------------------------------------

GPU_COMPUTE = re.compile(r"GPU Compute Time:.*?median = ([0-9.eE+-]+) ms")
TRTEXEC_VERSION = re.compile(
    r"\[TensorRT v(\d+)\]"
)  # trtexec's first line: RUNNING TensorRT.trtexec [TensorRT v100300]


def trtexec_version(log: str) -> str | None:
    """The TensorRT version a trtexec log names (v100300 -> 10.3.0), None when it names none."""
    found = TRTEXEC_VERSION.search(log)
    if not found:
        return None
    number = int(found.group(1))
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


def gpu_median_ms(log: str) -> float:
    """The median GPU compute time trtexec's performance summary reports, in ms."""
    found = GPU_COMPUTE.findall(log)
    if not found:
        raise RuntimeError("trtexec printed no 'GPU Compute Time ... median' line:\n" + log[-2000:])
    return float(found[-1])


def engine_build_command(emitted: str, trtexec: str) -> list[str]:
    """The emitted trtexec line as it runs on this machine (its trtexec, in the artefact's folder)."""
    words = shlex.split(emitted)
    if words[0] != "trtexec":
        raise RuntimeError(f"not a trtexec line: {emitted}")
    return [trtexec, *words[1:]]


def timing_command(
    trtexec: str, engine: str, input_name: str, shape: list[int], warmup_ms: int, iters: int
) -> list[str]:
    """trtexec timing a built engine at one input shape: CUDA graphs and no host copies, so the GPU
    compute time is the engine's own."""
    return [
        trtexec,
        f"--loadEngine={engine}",
        f"--shapes={input_name}:{'x'.join(map(str, shape))}",
        f"--warmUp={warmup_ms}",
        f"--iterations={iters}",
        "--duration=0",
        "--useCudaGraph",
        "--noDataTransfers",
    ]


def measure_trt(item: Prepared, folder: Path, args: argparse.Namespace) -> list[dict]:
    """Dense and 2:4 engines of every compact model: built by their emitted lines, timed per batch."""
    rows = []
    for c in item.compacts:
        if not c.trt:
            continue
        medians: dict[str, dict[int, float]] = {}
        version = None
        for mode in ("dense", "sparse"):
            where = folder / c.trt[mode]["folder"]
            version = trtexec_version(
                run_trtexec(engine_build_command(c.trt[mode]["trtexec"], args.trtexec), where)
            )
            medians[mode] = {
                batch: gpu_median_ms(
                    run_trtexec(
                        timing_command(
                            args.trtexec,
                            "model.engine",
                            c.trt["input"],
                            [batch, *c.trt["shape"]],
                            args.trt_warmup_ms,
                            args.trt_iters,
                        ),
                        where,
                    )
                )
                for batch in args.batches
            }
        for batch in args.batches:
            dense, sparse = medians["dense"][batch], medians["sparse"][batch]
            rows.append(
                {
                    "model": item.model,
                    "variant": c.label,
                    "batch": batch,
                    "dense_ms": dense,
                    "sparse_ms": sparse,
                    "sparse_speedup": dense / sparse,
                    "sparse_layers": c.trt["sparse_layers"],
                    "dense_layers": c.trt["dense_layers"],
                    "cosine_vs_dense": c.trt["change"]["cosine"],
                    "top1_vs_dense": c.trt["change"]["top1_agreement"],
                    "tensorrt": version,
                }
            )
    return rows


def run_trtexec(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(command)} failed in {cwd} ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return done.stdout


def trt_table(rows: list[dict]) -> str:
    head = [
        "model",
        "variant",
        "batch",
        "dense ms",
        "2:4 ms",
        "2:4 speed-up",
        "layers 2:4 / dense",
        "2:4 cosine, top-1 vs dense",
    ]
    cells = []
    for r in rows:
        top1 = "n/a" if r["top1_vs_dense"] is None else f"{r['top1_vs_dense']:.3f}"
        cells.append(
            [
                r["model"],
                r["variant"],
                str(r["batch"]),
                f"{r['dense_ms']:.3f}",
                f"{r['sparse_ms']:.3f}",
                f"{r['sparse_speedup']:.2f}x",
                f"{r['sparse_layers']} / {r['dense_layers']}",
                f"{r['cosine_vs_dense']:.5f}, {top1}",
            ]
        )
    return markdown(head, cells)


def parse_list(text: str, kind: type) -> list:
    return [kind(item) for item in text.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda | cpu (cuda:1 etc. work too)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument(
        "--width", type=float, default=1.0, help="channel width multiplier (small shapes: 0.125)"
    )
    parser.add_argument("--targets", default="0.7,0.5", help="FLOPs targets (fraction kept)")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--dtype", choices=["fp16", "fp32"], help="default: fp16 on cuda, fp32 on cpu")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50, help="timed runs per round and module")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--prepare-only", type=Path, metavar="DIR", help="prepare plans into DIR and stop")
    parser.add_argument(
        "--from", dest="source", type=Path, metavar="DIR", help="measure plans prepared in DIR"
    )
    parser.add_argument(
        "--trt-sparsity", action="store_true", help="also time dense vs 2:4 sparse TensorRT fp16 engines"
    )
    parser.add_argument(
        "--trtexec", default=shutil.which("trtexec") or "trtexec", help="trtexec to build and time with"
    )
    parser.add_argument(
        "--trt-iters", type=int, default=200, help="trtexec timed iterations per engine and batch"
    )
    parser.add_argument("--trt-warmup-ms", type=int, default=500, help="trtexec warm-up per engine and batch")
    args = parser.parse_args(argv)
    args.batches = parse_list(args.batches, int)
    models = parse_list(args.models, str)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")

    with contextlib.ExitStack() as stack:
        if args.source:
            folder, items = args.source, load_prepared(args.source)
        else:
            folder = args.prepare_only or Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-bench-"))
            )
            folder.mkdir(parents=True, exist_ok=True)
            targets = parse_list(args.targets, float)
            trt_batch = max(args.batches) if args.trt_sparsity else None
            items = [
                prepare(m, args.size, args.width, targets, args.round_to, folder, trt_batch) for m in models
            ]
            if args.prepare_only:
                print(f"prepared {', '.join(models)} in {save_prepared(items, folder)}")
                return 0
        return measure_all(items, folder, args)


def measure_all(items: list[Prepared], folder: Path, args: argparse.Namespace) -> int:
    """The measuring phase: torch modules on --device, then (--trt-sparsity) TensorRT engines."""
    if args.trt_sparsity:
        if not any(c.trt for item in items for c in item.compacts):
            raise SystemExit(
                "error: --trt-sparsity, but the plans were prepared without it (prepare with --trt-sparsity)"
            )
        if shutil.which(args.trtexec) is None:
            raise SystemExit(
                f"error: --trt-sparsity needs trtexec (TensorRT's samples/bin); not found: {args.trtexec}"
            )

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device (use --device cpu)")
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    ]
    torch.backends.cudnn.benchmark = True
    rows = []
    for item in items:
        rows += results(item, measure(item, args, device, dtype))
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    header = (
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {name}, torch {torch.__version__}, "
        f"{str(dtype).removeprefix('torch.')}, channels_last, {args.rounds}x{args.iters} interleaved runs after "
        f"{args.warmup} warm-up, input {items[0].size if items else args.size}px"
    )
    print(header)
    print(table(rows))
    trt_rows = [row for item in items for row in measure_trt(item, folder, args)] if args.trt_sparsity else []
    if trt_rows:
        print(
            f"TensorRT {trt_rows[0]['tensorrt']} fp16 engines, dense vs 2:4 sparse: median GPU compute time, "
            f"{args.trt_iters} iterations after {args.trt_warmup_ms} ms warm-up, CUDA graphs, no host copies"
        )
        print(trt_table(trt_rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"setup": header, "results": rows, "tensorrt_sparsity": trt_rows}, indent=2) + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
