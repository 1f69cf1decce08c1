"""Measurements shared by the comparison benchmarks: one counter, one runtime, one clock for every tool.

Each tool's own numbers are not comparable (Torch-Pruning counts BN and activation ops, deploysparse
counts Conv/Gemm multiply-accumulates on the ONNX graph), so every compact model is measured here the
same way: params and MACs with Torch-Pruning's `count_ops_and_params` on the nn.Module, latency with
`deploysparse.bench.benchmark` on the ONNX file, outputs with ONNX Runtime on one fresh random batch.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


def test_archs() -> dict[str, Any]:
    """The architecture suite of the tests (tests/archs), importable from a script run anywhere."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.archs import ARCHS

    return ARCHS


@dataclass
class Outcome:
    """What one tool produced for one model and budget; `error` names the stage that failed."""

    tool: str
    model: str
    budget: str
    seconds: list[float] = field(default_factory=list)
    module: nn.Module | None = None
    onnx_path: Path | None = None
    error: str | None = None
    shapes_ok: bool | None = None
    ort_ok: bool | None = None
    onnx_vs_module: float | None = None
    params: int | None = None
    macs: int | None = None
    latency_ms: dict[int, float] = field(default_factory=dict)
    dead_removed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def wall_s(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


def timed_median(workflow: Callable[[Path], Any], folder: Path, repeats: int) -> tuple[Any, list[float]]:
    """Run `workflow(out_dir)` `repeats` times in fresh sub-folders; the last result and every duration."""
    seconds = []
    result = None
    for i in range(repeats):
        out = folder / f"run{i}"
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = workflow(out)
        seconds.append(time.perf_counter() - start)
    return result, seconds


def outputs_of(module: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """The module's outputs (one or a tuple) as numpy arrays, in eval mode without gradients."""
    module.eval()
    with torch.no_grad():
        out = module(x)
    items = out if isinstance(out, (tuple, list)) else (out,)
    return [t.detach().numpy() for t in items]


def ort_outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    """Run the ONNX file in ONNX Runtime (CPU, default optimisations) on its only input."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def check_outcome(outcome: Outcome, original: nn.Module, input_shape: Sequence[int], seed: int) -> None:
    """Fill shapes_ok, ort_ok, onnx_vs_module on a fresh random batch of 3 (not the export's batch 2)."""
    x = np.random.default_rng(seed).standard_normal((3, *input_shape)).astype(np.float32)
    want = [a.shape for a in outputs_of(original, torch.from_numpy(x))]
    got_module = None
    if outcome.module is not None:
        try:
            got_module = outputs_of(outcome.module, torch.from_numpy(x))
        except Exception as exc:
            outcome.extra["module_error"] = f"compact module does not run: {first_line(exc)}"
            outcome.module = None
        else:
            outcome.shapes_ok = [a.shape for a in got_module] == want
    if outcome.onnx_path is None:
        return
    try:
        got = ort_outputs(outcome.onnx_path, x)
    except Exception as exc:
        outcome.ort_ok = False
        outcome.error = outcome.error or f"onnxruntime: {first_line(exc)}"
        return
    outcome.ort_ok = [a.shape for a in got] == want
    if outcome.shapes_ok is None:
        outcome.shapes_ok = outcome.ort_ok
    if got_module is not None and [a.shape for a in got] == [a.shape for a in got_module]:
        outcome.onnx_vs_module = max(float(np.abs(a - b).max()) for a, b in zip(got, got_module, strict=True))


def count(module: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(params, MACs) with Torch-Pruning's counter, the same for every tool's module."""
    import torch_pruning as tp

    module.eval()
    macs, params = tp.utils.count_ops_and_params(module, example[:1])
    return int(params), int(macs)


def latency(path: Path, batches: Sequence[int] = (1, 8)) -> dict[int, float]:
    """p50 milliseconds per batch size with `deploysparse.bench.benchmark` (ONNX Runtime CPU)."""
    from deploysparse.bench import benchmark

    report = benchmark(path, batches=tuple(batches), warmup=10, iters=100)
    return {r.batch: r.p50_ms for r in report.results}


class StageError(Exception):
    """A workflow step failed; the message starts with the step ("prune: ...", "export: ...")."""


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the workflow step in any exception it raises, so the coverage table says where a tool broke."""
    try:
        yield
    except StageError:
        raise
    except Exception as exc:
        raise StageError(f"{name}: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:160]


def output_layers(module: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The Conv/Linear layers whose result is a model output: what a careful Torch-Pruning user ignores.

    Found by running the model with forward hooks, so it needs no per-architecture knowledge: a layer
    whose output tensor object is one of the model's outputs writes that output directly (when an
    activation follows the head, the last layer that ran stands in).
    """
    produced: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda mod, _inp, out: produced.append((mod, out)))
        for m in module.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
    ]
    try:
        module.eval()
        with torch.no_grad():
            out = module(example)
    finally:
        for h in hooks:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else (out,)
    ids = {id(t) for t in outs}
    direct = [m for m, t in produced if id(t) in ids]
    return direct or [produced[-1][0]]
