"""Why interleaved timing turns ONNX Runtime's thread spinning off: the same two models timed alone,
interleaved with spinning (ONNX Runtime's default), and interleaved without.

    PYTHONPATH=. python benchmarks/spinning.py [ORIGINAL.onnx COMPACT.onnx] [--batch 8] [--runs 11]
        [--threads 2] [--repeats 3]

Without model paths: deploysparse.zoo's MobileNetV2 (seeded random weights, 224x224, BN folded) and
its uniform L1 schedule at half the MACs (benchmarks/latency_budget.uniform_at). Each figure is the
median of --runs runs after two warm-up runs; "interleaved" alternates the two sessions run by run
(the order flipping every run, as deploysparse.latency's measured correction and
benchmarks/speedup.py do); "alone" runs one session's runs back to back, the other session open
but idle. Printed: the compact model's latency as a fraction of the original's, --repeats times.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.latency_budget import export, uniform_at
from deploysparse import api
from deploysparse.backends import get_backend
from deploysparse.backends.feeds import make_feeds
from deploysparse.modelio import save_model
from deploysparse.zoo.mobilenet import mobilenet_v2


def _ms(runner, feeds) -> float:
    start = time.perf_counter()
    runner.run(feeds)
    return (time.perf_counter() - start) * 1e3


def fractions(original: Path, compact: Path, args: argparse.Namespace) -> dict[str, float]:
    """Compact / original median latency: alone, interleaved with spinning, interleaved without."""
    engine = get_backend("onnxruntime")
    out = {}
    for mode, spinning in (
        ("alone", True),
        ("interleaved, spinning", True),
        ("interleaved, no spinning", False),
    ):
        with (
            engine.runner(original, args.threads, spinning=spinning) as a,
            engine.runner(compact, args.threads, spinning=spinning) as b,
        ):
            rng = np.random.default_rng(0)
            feeds = make_feeds(a.input_specs, batch=args.batch, seed=rng)
            for _ in range(2):
                a.run(feeds)
                b.run(feeds)
            if mode == "alone":
                times = [[_ms(a, feeds) for _ in range(args.runs)], [_ms(b, feeds) for _ in range(args.runs)]]
            else:
                times = [[], []]
                for i in range(args.runs):
                    for which in (i % 2, 1 - i % 2):
                        times[which].append(_ms((a, b)[which], feeds))
        out[mode] = float(np.median(times[1]) / np.median(times[0]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.models:
            original, compact = args.models
        else:
            torch.manual_seed(0)
            original = export(mobilenet_v2(num_classes=10), 224, Path(tmp) / "mobilenet_v2.onnx")
            ga = api.analyze(original, time_denormals=False).graph
            result = api.prune(original, plan=uniform_at(ga, 0.5))
            compact = save_model(result.model, Path(tmp) / "compact.onnx")
            print(
                f"MobileNetV2 224x224, uniform L1 keeping {result.summary['flops_after'] / result.summary['flops_before']:.3f} of the MACs"
            )
        print(
            f"batch {args.batch}, {args.threads} threads, median of {args.runs} runs; compact / original latency"
        )
        print("| repeat | alone | interleaved, spinning | interleaved, no spinning |")
        print("| --- | --- | --- | --- |")
        for repeat in range(args.repeats):
            row = fractions(original, compact, args)
            print(f"| {repeat + 1} | " + " | ".join(f"{row[k]:.3f}" for k in row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
