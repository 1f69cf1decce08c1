"""Where a sweep point's time went, recorded in its row as `phases` (benchmarks/sweep_cluster.py reads them).

A point's seconds split into moving its inputs to the node (`transfer_s`: object store -> the node's
blob cache), its own steps (`point_s`: prune, build, validate, write the report), waiting for the
benchmark (`bench_wait_s`: the benchmarking node busy with another point, the task scheduled, the
models shipped to it) and the benchmark itself (`bench_s`). Timestamps (`started`, `ended`, and
`published` once the point is in OUTDIR) are wall-clock seconds since the epoch, so the time a
cluster spends outside any point (scheduling trials, starting actors) is the sweep's wall time less
the points' spans; on a cluster they come from several machines' clocks, as close as NTP keeps them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

Args = ParamSpec("Args")
Result = TypeVar("Result")


@dataclass
class PointClock:
    """Started when a point starts on its node; `timed(measure)` times its benchmark call."""

    started: float = field(default_factory=time.time)
    transfer_s: float = 0.0
    bench_s: float | None = None  # the measurement alone, when it ran elsewhere (a Ray task)
    measure_call_s: float = 0.0  # the whole benchmark call, as the point saw it

    def timed(self, measure: Callable[Args, Result]) -> Callable[Args, Result]:
        """`measure` (the point's benchmark call, whatever its arguments) adding its time to the clock."""

        def timed_measure(*args: Args.args, **kwargs: Args.kwargs) -> Result:
            start = time.perf_counter()
            try:
                return measure(*args, **kwargs)
            finally:
                self.measure_call_s += time.perf_counter() - start

        return timed_measure

    def phases(self, point_seconds: float) -> dict[str, Any]:
        """The row's `phases`, given the point's own wall time (run_point, benchmark call included)."""
        bench = self.measure_call_s if self.bench_s is None else min(self.bench_s, self.measure_call_s)
        return {
            "started": round(self.started, 3),
            "transfer_s": round(self.transfer_s, 3),
            "point_s": round(max(point_seconds - self.measure_call_s, 0.0), 3),
            "bench_wait_s": round(self.measure_call_s - bench, 3),
            "bench_s": round(bench, 3),
            "ended": round(time.time(), 3),
        }


def published(row: dict[str, Any]) -> dict[str, Any]:
    """`row` stamped with the moment its point reaches OUTDIR (rows of failed points have no phases)."""
    if "phases" not in row:
        return row
    return {**row, "phases": {**row["phases"], "published": round(time.time(), 3)}}
