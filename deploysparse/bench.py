"""Latency and throughput of a model on a backend, per batch size, the way a deployment would see them.

Each batch size gets its own warm-up (first runs pay for allocation and kernel selection), then
`iters` timed synchronous runs on random inputs of the right dtype (never zeros: some kernels
short-cut on zeros). The report states the backend, its version, the device and the threads, because
a latency figure without them cannot be compared with another.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from deploysparse import progress
from deploysparse.backends import DEFAULT_BACKEND, get_backend
from deploysparse.backends.feeds import feed_shapes, make_feeds
from deploysparse.backends.timing import timed_runs
from deploysparse.errors import UsageError
from deploysparse.run_shapes import RunShapes, SkippedBatch, resolve_shapes


@dataclass
class BatchTiming:
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float
    iters: int  # timed runs made (fewer than asked when a time box cut them)


@dataclass
class BenchReport:
    backend: str
    version: str
    device: str
    threads: int | None
    model: str
    warmup: int
    iters: int
    results: list[BatchTiming] = field(default_factory=list)
    # the input shapes timed (at the given batch, the static one or 1) and where they came from
    shapes: RunShapes | None = None
    skipped: list[SkippedBatch] = field(default_factory=list)  # batch sizes the model cannot take

    def to_json(self) -> dict:
        return {
            "backend": self.backend,
            "version": self.version,
            "device": self.device,
            "threads": self.threads,
            "model": self.model,
            "warmup": self.warmup,
            "iters": self.iters,
            "input_shapes": self.shapes.to_json() if self.shapes else None,
            "skipped_batches": [s.to_json() for s in self.skipped],
            "results": [asdict(r) for r in self.results],
        }


def benchmark(
    model_path: str | os.PathLike[str],
    backend: str = DEFAULT_BACKEND,
    batches: Sequence[int] | None = None,
    warmup: int = 10,
    iters: int = 100,
    threads: int | None = None,
    seed: int = 0,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    max_seconds: float | None = None,
    min_iters: int = 1,
) -> BenchReport:
    """Time `model_path` at each batch size; p50/p90/p99 latency in ms and samples per second.

    Inputs are fed at `input_shapes` (--input-shape: a model with dynamic height and width needs
    it), else the model's own dims (`run_shapes.resolve_shapes`); `batches` defaults to the batch of
    those shapes. A batch size the model cannot take (a static batch) is skipped and listed in the
    report's `skipped`, never a failure. `max_seconds` time-boxes each batch size (backends.timing.
    timed_runs: warm-up and timing cut short, at least `min_iters` timed runs)."""
    if warmup < 0 or iters < 1:
        raise UsageError(f"--warmup must be >= 0 and --iters >= 1, got {warmup} and {iters}")
    if batches is not None and (not batches or any(b < 1 for b in batches)):
        raise UsageError(f"--batch sizes must be positive integers, got {list(batches)}")
    engine = get_backend(backend)
    rng = np.random.default_rng(seed)
    with engine.runner(model_path, threads=threads) as runner:
        shapes = resolve_shapes(runner.input_specs, input_shapes)
        batches, skipped = shapes.usable_batches(batches or [shapes.batch])
        for batch in batches:  # every batch size checked before any is timed
            feed_shapes(runner.input_specs, shapes.at_batch(batch), source=str(model_path))
        report = BenchReport(
            backend=engine.name,
            version=engine.version(),
            device=engine.device(),
            threads=getattr(runner, "threads", None),
            model=str(model_path),
            warmup=warmup,
            iters=iters,
            shapes=shapes,
            skipped=skipped,
        )
        with progress.progress("benchmarking", total=len(batches) * (warmup + iters)) as advance:
            for batch in batches:
                feeds = make_feeds(
                    runner.input_specs, shapes.at_batch(batch), seed=rng, source=str(model_path)
                )
                seconds = timed_runs(
                    lambda feeds=feeds: runner.run(feeds), iters, warmup, advance, max_seconds, min_iters
                )
                report.results.append(_summarise(batch, seconds))
    return report


def _summarise(batch: int, seconds: np.ndarray) -> BatchTiming:
    ms = seconds * 1e3
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    return BatchTiming(
        batch=batch,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=float(ms.mean()),
        throughput_per_s=batch * len(seconds) / float(seconds.sum()),
        iters=len(seconds),
    )
