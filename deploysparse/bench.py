"""Latency and throughput of a model on a backend, per batch size, the way a deployment would see them.

Each batch size gets its own warm-up (first runs pay for allocation and kernel selection), then
`iters` timed synchronous runs on random inputs of the right dtype (never zeros: some kernels
short-cut on zeros). The report states the backend, its version, the device and the threads, because
a latency figure without them cannot be compared with another.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from deploysparse import progress
from deploysparse.backends import DEFAULT_BACKEND, get_backend
from deploysparse.backends.feeds import feed_shapes, make_feeds
from deploysparse.backends.timing import timed_runs
from deploysparse.errors import UsageError


@dataclass
class BatchTiming:
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float


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

    def to_json(self) -> dict:
        return {
            "backend": self.backend,
            "version": self.version,
            "device": self.device,
            "threads": self.threads,
            "model": self.model,
            "warmup": self.warmup,
            "iters": self.iters,
            "results": [asdict(r) for r in self.results],
        }


def benchmark(
    model_path: str | os.PathLike[str],
    backend: str = DEFAULT_BACKEND,
    batches: Sequence[int] = (1,),
    warmup: int = 10,
    iters: int = 100,
    threads: int | None = None,
    seed: int = 0,
) -> BenchReport:
    """Time `model_path` at each batch size; p50/p90/p99 latency in ms and samples per second."""
    if warmup < 0 or iters < 1:
        raise UsageError(f"--warmup must be >= 0 and --iters >= 1, got {warmup} and {iters}")
    if not batches or any(b < 1 for b in batches):
        raise UsageError(f"--batch sizes must be positive integers, got {list(batches)}")
    engine = get_backend(backend)
    rng = np.random.default_rng(seed)
    with engine.runner(model_path, threads=threads) as runner:
        for batch in batches:  # every batch size checked before any is timed
            feed_shapes(runner.input_specs, batch=batch, source=str(model_path))
        report = BenchReport(
            backend=engine.name,
            version=engine.version(),
            device=engine.device(),
            threads=getattr(runner, "threads", None),
            model=str(model_path),
            warmup=warmup,
            iters=iters,
        )
        with progress.progress("benchmarking", total=len(batches) * (warmup + iters)) as advance:
            for batch in batches:
                feeds = make_feeds(runner.input_specs, batch=batch, seed=rng, source=str(model_path))
                seconds = timed_runs(lambda feeds=feeds: runner.run(feeds), iters, warmup, advance)
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
    )
