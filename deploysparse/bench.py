"""Latency and throughput of models on a backend, per batch size, the way a deployment would see them.

Each batch size gets its own warm-up until the calls stop getting faster (first runs pay for
allocation and kernel selection: `timing.warm_up`), then timed synchronous runs on random inputs of
the right dtype (never zeros: some kernels short-cut on zeros). The report states the backend, its
version, the device and the threads, because a latency figure without them cannot be compared with
another.

`benchmark` times one model (`deploysparse bench`). `benchmark_side_by_side` times several (a run's
original, flushed original and compact model) in rounds, the models taking turns in an order
reversed every round, so a change of the machine's load falls on all of them alike; it keeps every
call's time, which `deploysparse check` needs for its intervals (`timing_stats`), and the machine's
fingerprint, which decides whether milliseconds are comparable with a baseline's.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from deploysparse import progress
from deploysparse.backends import DEFAULT_BACKEND, get_backend
from deploysparse.backends.feeds import feed_shapes, make_feeds
from deploysparse.backends.machine import affinity, fingerprint, load_average
from deploysparse.backends.timing import WarmUp, interleaved, timed_runs, warm_up
from deploysparse.errors import UsageError
from deploysparse.records import attribute_record
from deploysparse.run_shapes import RunShapes, SkippedBatch, resolve_shapes
from deploysparse.timing_stats import outlier_runs


@dataclass
class BatchTiming:
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float
    iters: int  # timed runs made (fewer than asked when a time box cut them)
    warmup_calls: int  # untimed calls made before timing (at least the minimum, until settled)
    warmup_settled: bool  # whether the calls had stopped getting faster when timing began


@dataclass
class BenchReport:
    backend: str
    version: str
    device: str
    threads: int | None
    model: str
    warmup: int  # the minimum warm-up; each result says how many calls it took
    iters: int
    results: list[BatchTiming] = field(default_factory=list)
    # the input shapes timed (at the given batch, the static one or 1) and where they came from
    shapes: RunShapes | None = None
    skipped: list[SkippedBatch] = field(default_factory=list)  # batch sizes the model cannot take

    def to_json(self) -> dict:
        return {
            **attribute_record(self, "backend", "version", "device", "threads", "model", "warmup", "iters"),
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
                call = functools.partial(runner.run, feeds)
                warm = warm_up(call, warmup, advance, _warm_box(max_seconds))
                seconds = timed_runs(call, iters, 0, advance, max_seconds, min_iters)
                report.results.append(_summarise(batch, seconds, warm))
    return report


@dataclass
class Rounds:
    """One model at one batch size timed in rounds: every call's seconds, one array per round."""

    batch: int
    seconds: list[np.ndarray]
    warmup: WarmUp

    def to_json(self) -> dict:
        """report.json's latency point: percentiles of all rounds pooled, and each round as a run with
        its calls (ms, 4 significant digits), the runs far from the others named in `outlier_runs`."""
        runs = [
            {
                "p50_ms": float(np.percentile(s * 1e3, 50)),
                "p99_ms": float(np.percentile(s * 1e3, 99)),
                "samples_ms": [float(f"{ms:.4g}") for ms in s * 1e3],
            }
            for s in self.seconds
        ]
        return {
            **asdict(_summarise(self.batch, np.concatenate(self.seconds), self.warmup)),
            "runs": runs,
            "outlier_runs": outlier_runs([run["p50_ms"] for run in runs]),
        }


@dataclass
class SideBySide:
    """What `benchmark_side_by_side` measured: model -> one `Rounds` per batch size, the machine's
    `fingerprint` and the `conditions` of the measurement (report.json's `latency` keys)."""

    models: dict[str, list[Rounds]]
    fingerprint: dict
    conditions: dict


def benchmark_side_by_side(
    models: Mapping[str, tuple[str | os.PathLike[str], str]],
    batches: Sequence[int],
    warmup: int,
    iters: int,
    rounds: int,
    threads: int | None = None,
    seed: int = 0,
    shapes: RunShapes | None = None,
    box_s: float | None = None,
    min_iters: int = 1,
    own_inputs: Collection[str] = (),
) -> SideBySide:
    """Time `models` (name -> (path, backend)) at each batch size, `iters` calls per model and batch
    in each of `rounds` rounds, the models taking turns (`timing.interleaved`), after a warm-up until
    settled of each. All models get the same random inputs (those of the first model's inputs) and
    stay open throughout, with thread spinning off (spinning threads of one session slow the next).

    Inputs are fed at `shapes` (the run's shapes: a dynamic-H/W model needs them), else the first
    model's own dims. `box_s` time-boxes each model's warm-up and each round at each batch size
    (`timing.timed_runs`: at least `min_iters` calls; pipeline/time_box.py plans it). Models named in
    `own_inputs` (the yardstick) get random inputs of their own, at their own dims."""
    engines = {backend: get_backend(backend) for _, backend in models.values()}
    load_before = load_average()
    with contextlib.ExitStack() as stack:
        runners = {
            name: stack.enter_context(engines[backend].runner(path, threads, spinning=False))
            for name, (path, backend) in models.items()
        }
        shared = [name for name in runners if name not in own_inputs]
        for name, runner in runners.items():  # every batch size checked before any is timed
            for batch in batches:
                at = _at(shapes if name in shared else None, batch)
                feed_shapes(runner.input_specs, **at, source=str(models[name][0]))
        first = runners[shared[0]]
        rng = np.random.default_rng(seed)

        def inputs(name: str, at_shapes: RunShapes | None) -> dict[int, dict[str, np.ndarray]]:
            specs, source = runners[name].input_specs, str(models[name][0])
            return {b: make_feeds(specs, **_at(at_shapes, b), seed=rng, source=source) for b in batches}

        common = inputs(shared[0], shapes)
        feeds = {name: common if name in shared else inputs(name, None) for name in runners}
        warm = {
            name: [
                warm_up(functools.partial(runner.run, feeds[name][b]), warmup, None, _warm_box(box_s))
                for b in batches
            ]
            for name, runner in runners.items()
        }

        def one_round(name: str, advance) -> list[np.ndarray]:
            run = runners[name].run
            seconds = [
                timed_runs(functools.partial(run, feeds[name][b]), iters, 0, None, box_s, min_iters)
                for b in batches
            ]
            advance(1)
            return seconds

        with progress.progress("benchmark", total=len(runners) * rounds) as advance:
            tasks = [lambda _, name=name: one_round(name, advance) for name in runners]
            timed = dict(zip(runners, interleaved(tasks, rounds), strict=True))
        used_threads = getattr(first, "threads", threads)
    measured = {
        name: [Rounds(b, [r[i] for r in timed[name]], warm[name][i]) for i, b in enumerate(batches)]
        for name in models
    }
    devices = list(dict.fromkeys(engine.device() for engine in engines.values()))
    return SideBySide(
        models=measured,
        fingerprint=fingerprint(
            " + ".join(devices), {n: e.version() for n, e in engines.items()}, used_threads
        ),
        conditions={
            "order": "interleaved",
            "rounds": rounds,
            "iters": iters,
            "warmup": warmup,
            "affinity": affinity(),
            "load_average": [load_before, load_average()],
        },
    )


def _at(shapes: RunShapes | None, batch: int) -> dict:
    """`make_feeds`' and `feed_shapes`' shape arguments for `batch`: the run's shapes at that batch,
    else the batch alone (the model's own dims)."""
    return {"shapes": shapes.at_batch(batch)} if shapes is not None else {"batch": batch}


def _warm_box(max_seconds: float | None) -> float | None:
    """The warm-up's share of a time box: a fifth, the rest for timed calls."""
    return None if max_seconds is None else max_seconds / 5


def _summarise(batch: int, seconds: np.ndarray, warm: WarmUp) -> BatchTiming:
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
        warmup_calls=warm.calls,
        warmup_settled=warm.settled,
    )
