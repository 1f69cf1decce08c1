"""How long a run's speed measurement may take, and what fits in that time.

A recipe's `bench` section says what it would like measured: `repeats` runs of `iters` timed calls
per batch size for every model (the original, its denormal-flushed copy, the compact model), and a
per-layer profile. On a digits CNN that is a second; on PaddleOCR's PP-OCRv4 detector at 320x320
(0.58 GMACs) on 2 cores it was 680 s of a `run` (issue 22): 5 repeats x 3 models x (10 + 50) calls at
batch 1 and at batch 8, each repeat a new session, then 3 x 60 profiled calls at batch 8. A fixed
count of calls is the wrong unit: what a CI job can afford is time.

So `bench.max_seconds` (60 s by default) bounds the measurement, planned from the cost of one call:
- one warm call of the original at the smallest batch measures what a call costs here (a larger
  batch costs about as much per sample on a CPU; one call at it settles a batch the estimate drops);
- the repeated benchmark gets three quarters of the time (all of it without a profile), shared
  equally by every (model, repeat, batch size); each of those is time-boxed (backends.timing.
  timed_runs: warm-up cut to a fifth of its share, timing stopped when the share is spent) and
  keeps at least MIN_ITERS timed calls, so percentiles stay percentiles;
- a batch size whose MIN_ITERS calls cannot fit its share is not measured: the costliest goes
  first, the cheapest is always kept, and each one dropped is named (report.json's
  `latency.skipped_batches`), as a static batch is;
- the per-layer profile gets the last quarter: as many profiled calls per model as fit at the
  largest batch measured, at least MIN_ITERS and at most `iters`.
A model that is fast enough for the recipe's counts runs exactly them: the box binds only where
the counts would not fit.
"""

from __future__ import annotations

from dataclasses import dataclass

from deploysparse.backends import REFERENCE_BACKEND, get_backend
from deploysparse.backends.feeds import make_feeds
from deploysparse.backends.timing import timed_runs
from deploysparse.recipe import BenchSettings
from deploysparse.run_shapes import RunShapes, SkippedBatch

MIN_ITERS = 5  # timed calls per measurement however tight the box: fewer make no percentile
PROFILE_SHARE = 0.25  # of bench.max_seconds, for the per-layer profile when there is one


@dataclass(frozen=True)
class TimePlan:
    """What the speed measurement does within `bench.max_seconds`."""

    batches: list[int]  # the batch sizes measured, in the recipe's order
    skipped: list[SkippedBatch]  # asked for, but one call costs too much for the box
    box_s: float | None  # seconds for one model, one repeat, one batch size; None: not boxed
    profile_runs: int  # profiled calls per model
    profile_warmup: int


def plan_measurement(
    bench: BenchSettings, original: str, shapes: RunShapes, batches: list[int], models: int, profile: bool
) -> TimePlan:
    """The plan for measuring `models` models (the original at `original` among them, fed at
    `shapes`) at `batches` (module doc); the recipe's counts as they are without `max_seconds`."""
    if bench.max_seconds is None:
        return TimePlan(list(batches), [], None, bench.iters, bench.warmup)
    with CallCost(original, shapes, min(batches)) as cost:
        return plan_time(bench, cost, batches, models, profile)


def plan_time(
    bench: BenchSettings, cost: CallCost, batches: list[int], models: int, profile: bool
) -> TimePlan:
    """The plan within `bench.max_seconds`, from what one call costs (`cost`): drop the costliest
    batch while MIN_ITERS calls of it cannot fit its share, then share the time out."""
    assert bench.max_seconds is not None
    latency_s = bench.max_seconds * (1 - PROFILE_SHARE if profile else 1)
    kept, skipped = list(batches), []
    while len(kept) > 1:
        share = latency_s / (bench.repeats * models * len(kept))
        costliest = max(kept)
        if (MIN_ITERS + 1) * cost.known(costliest) > share:
            cost(costliest)  # the estimate would drop it: one call decides
        if (MIN_ITERS + 1) * cost.known(costliest) <= share:
            break
        kept.remove(costliest)
        skipped.append(
            SkippedBatch(
                costliest,
                f"one call at batch {costliest} takes {cost.known(costliest):.3g} s here: {MIN_ITERS} timed "
                f"calls of {models} models x {bench.repeats} repeats do not fit bench.max_seconds "
                f"{bench.max_seconds:g}",
            )
        )
    box = latency_s / (bench.repeats * models * len(kept))
    per_call = cost.known(max(kept))
    runs = max(MIN_ITERS, min(bench.iters, int(bench.max_seconds * PROFILE_SHARE / (models * per_call))))
    return TimePlan(kept, skipped, box, runs, min(bench.warmup, max(1, runs // 5)))


class CallCost:
    """What one call of `model` costs here, in seconds, at a batch size: measured at `smallest` (one
    untimed call first), estimated for a larger batch in proportion to its size (a CPU's cost grows
    about linearly with the batch; a GPU's less, so the estimate errs high), and measured with one
    call where the estimate alone would drop that batch (the session is warm by then)."""

    def __init__(self, model: str, shapes: RunShapes, smallest: int) -> None:
        self._runner = get_backend(REFERENCE_BACKEND).runner(model)
        self._shapes, self._smallest = shapes, smallest
        self.measured: dict[int, float] = {smallest: self._time(smallest, warmup=1)}

    def estimate(self, batch: int) -> float:
        return self.measured[self._smallest] * batch / self._smallest

    def known(self, batch: int) -> float:
        """The measured cost where there is one, else the estimate."""
        return self.measured.get(batch, self.estimate(batch))

    def __call__(self, batch: int) -> float:
        """Measure the cost at `batch` (once)."""
        if batch not in self.measured:
            self.measured[batch] = self._time(batch, warmup=0)
        return self.measured[batch]

    def _time(self, batch: int, warmup: int) -> float:
        feeds = make_feeds(self._runner.input_specs, self._shapes.at_batch(batch))
        return float(timed_runs(lambda: self._runner.run(feeds), 1, warmup)[0])

    def __enter__(self) -> CallCost:
        return self

    def __exit__(self, *exc: object) -> None:
        self._runner.close()
