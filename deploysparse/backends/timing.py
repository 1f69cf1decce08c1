"""Timing models, in one place: the fastest of N runs after warm-up, and several models timed run by
run in alternating order.

Two ways to read a latency on a shared, noisy machine, each for its own question:
- *fastest of N* (latency tables: one small layer at a time): the run least disturbed by other work
  is the closest to what the layer costs;
- *interleaved* (original against compact, as is against flushed, repeated benchmarks): the models
  take turns, the order reversed every other round, so a change of the machine's load falls on all
  of them alike, and the median of each ignores the runs it disturbed most. Runners timed this way
  are opened with thread spinning off: an idle ONNX Runtime thread busy-waits after each run and
  steals the cores of the model timed next (`backends/onnxruntime/runtime.session_options`).

Before either, `warm_up` runs a model until it stops getting faster, not a fixed count only: the
first calls pay for allocation, kernel selection, caches and the clock ramping up, and how many calls
that takes depends on the model and the machine.

`Timer` applies both to model files or ModelProtos on one backend at one batch size; it is what a
backend's `timer(batch)` returns (TensorRT's builds an engine per model first).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import onnx

from deploysparse.backends.feeds import make_feeds
from deploysparse.modelio import save_model

if TYPE_CHECKING:
    from deploysparse.backends.base import Backend, Runner

WARMUP, ITERS = 2, 7  # fastest of ITERS after WARMUP: a layer of the latency table
PAIR_RUNS = 11  # rounds of interleaved runs when the compact model is timed against the original
# Warm-up until settled: after the minimum, windows of SETTLE_WINDOW calls until the last window's
# median is no more than SETTLE_TOLERANCE faster than the one before (warm-up only ever makes calls
# faster; slower windows are noise), at most SETTLE_WINDOWS_MAX windows beyond the minimum.
SETTLE_WINDOW, SETTLE_TOLERANCE, SETTLE_WINDOWS_MAX = 5, 0.02, 4

T = TypeVar("T")
ModelLike = str | os.PathLike[str] | onnx.ModelProto


def timed_runs(
    run: Callable[[], object],
    iters: int,
    warmup: int = 0,
    advance: Callable[[int], None] | None = None,
    max_seconds: float | None = None,
    min_iters: int = 1,
) -> np.ndarray:
    """Seconds of each of `iters` calls of `run` after `warmup` untimed ones (`advance(1)` after
    every call, for a progress bar).

    With `max_seconds` the call is time-boxed, so a heavy model costs a bounded time instead of a
    fixed number of runs: warm-up ends after a fifth of the box (one run at least), timing once the
    box has passed and `min_iters` runs are timed; the array then holds the runs made."""
    began = time.perf_counter()
    for done in range(warmup):
        if done and max_seconds is not None and time.perf_counter() - began >= max_seconds / 5:
            break
        run()
        if advance:
            advance(1)
    seconds = np.empty(iters)
    for i in range(iters):
        if i >= min_iters and max_seconds is not None and time.perf_counter() - began >= max_seconds:
            return seconds[:i]
        start = time.perf_counter()
        run()
        seconds[i] = time.perf_counter() - start
        if advance:
            advance(1)
    return seconds


def settled(
    seconds: Sequence[float], window: int = SETTLE_WINDOW, tolerance: float = SETTLE_TOLERANCE
) -> bool:
    """Whether calls timed `seconds` (in call order) have stopped getting faster: the median of the
    last `window` is at most `tolerance` below the median of the `window` before it."""
    if len(seconds) < 2 * window:
        return False
    last, before = np.median(seconds[-window:]), np.median(seconds[-2 * window : -window])
    return bool(last >= before * (1 - tolerance))


@dataclass(frozen=True)
class WarmUp:
    """How a model was warmed up: untimed calls made, and whether they settled within the limit."""

    calls: int
    settled: bool


def warm_up(
    run: Callable[[], object],
    calls: int,
    advance: Callable[[int], None] | None = None,
    max_seconds: float | None = None,
) -> WarmUp:
    """Call `run` at least `calls` times (at least two windows, to judge), then window by window until
    the calls have `settled`, at most SETTLE_WINDOWS_MAX windows more. `calls=0` asks for no warm-up
    (returned as not settled). `advance(1)` after each of the first `calls`, for a progress bar that
    counts the minimum. With `max_seconds` the warm-up stops once that time has passed (one call at
    least): a heavy model's time box is not spent warming up; whether it settled is then reported."""
    if calls == 0:
        return WarmUp(0, False)
    began = time.perf_counter()
    minimum = max(calls, 2 * SETTLE_WINDOW)
    seconds = list(timed_runs(run, minimum, max_seconds=max_seconds))
    if advance:
        advance(calls)
    for _ in range(SETTLE_WINDOWS_MAX):
        if settled(seconds) or (max_seconds is not None and time.perf_counter() - began >= max_seconds):
            break
        seconds.extend(timed_runs(run, SETTLE_WINDOW))
    return WarmUp(len(seconds), settled(seconds))


def fastest_ms(run: Callable[[], object], warmup: int = WARMUP, iters: int = ITERS) -> float:
    """The fastest of `iters` runs after `warmup`, in ms: the least disturbed by other work."""
    return float(timed_runs(run, iters, warmup).min()) * 1e3


def interleaved(tasks: Sequence[Callable[[int], T]], rounds: int, per_round: int = 1) -> list[list[T]]:
    """What each task returned over `rounds` rounds, called `per_round` times per round with the
    round's number, the tasks' order reversed every other round."""
    results: list[list[T]] = [[] for _ in tasks]
    for r in range(rounds):
        order = range(len(tasks)) if r % 2 == 0 else reversed(range(len(tasks)))
        for i in order:
            for _ in range(per_round):
                results[i].append(tasks[i](r))
    return results


def interleaved_medians_ms(
    runs: Sequence[Callable[[], object]], rounds: int, per_round: int = 1, warmup: int = WARMUP
) -> list[float]:
    """Median latency (ms) of each run, after `warmup` untimed calls of each, timed interleaved."""
    for run in runs:
        for _ in range(warmup):
            run()
    times = interleaved([lambda _, run=run: timed_runs(run, 1)[0] for run in runs], rounds, per_round)
    return [float(np.median(t)) * 1e3 for t in times]


class Timer:
    """Times models on one backend at one batch size: a latency table's layers (fastest run) and the
    original against the compact model (interleaved). Models may be files or ModelProtos (written to
    a temporary folder); without feeds, random ones (`feeds.make_feeds`) at the timer's batch, at
    `shapes` when given (input name -> shape, e.g. the analysed input shape)."""

    def __init__(self, backend: Backend, batch: int, threads: int | None = None) -> None:
        self.backend = backend
        self.batch = batch
        self.threads = threads

    @property
    def name(self) -> str:
        return self.backend.name

    def version(self) -> str:
        return self.backend.version()

    @contextlib.contextmanager
    def open(self, path: Path, spinning: bool = True) -> Iterator[Runner]:
        """A runner of the backend on one model file (spinning: Backend.runner's)."""
        with self.backend.runner(path, self.threads, spinning=spinning) as runner:
            yield runner

    def fastest_ms(
        self,
        model: ModelLike,
        feeds: Mapping[str, np.ndarray] | None = None,
        shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> float:
        """The fastest of ITERS runs after WARMUP (ms)."""
        with self._files([model]) as (path,), self.open(path) as runner:
            data = feeds if feeds is not None else self._feeds(runner, shapes)
            return fastest_ms(lambda: runner.run(data))

    def interleaved_ms(
        self,
        models: Sequence[ModelLike],
        feeds: Mapping[str, np.ndarray] | None = None,
        shapes: Mapping[str, Sequence[int]] | None = None,
        rounds: int = PAIR_RUNS,
        per_round: int = 1,
    ) -> list[float]:
        """Median latency (ms) of each model (all with the same inputs), timed run by run in
        alternating order with thread spinning off."""
        with self._files(models) as paths, contextlib.ExitStack() as stack:
            runners = [stack.enter_context(self.open(path, spinning=False)) for path in paths]
            data = feeds if feeds is not None else self._feeds(runners[0], shapes)
            return interleaved_medians_ms([lambda r=r: r.run(data) for r in runners], rounds, per_round)

    def _feeds(self, runner: Runner, shapes: Mapping[str, Sequence[int]] | None) -> dict[str, np.ndarray]:
        return make_feeds(runner.input_specs, shapes, batch=self.batch)

    @contextlib.contextmanager
    def _files(self, models: Sequence[ModelLike]) -> Iterator[list[Path]]:
        """The models as files: paths as they are, ModelProtos written to a temporary folder."""
        with tempfile.TemporaryDirectory(prefix="deploysparse-timing-") as folder:
            yield [
                save_model(m, Path(folder) / f"model{i}.onnx") if isinstance(m, onnx.ModelProto) else Path(m)
                for i, m in enumerate(models)
            ]
