"""What denormal weights cost on this CPU: the model timed as it is and with them flushed, side by side.

`deploysparse analyze` says this before anything else (denormals.py explains where denormal weights
come from). It is measured on ONNX Runtime's CPU provider whatever the installed providers: the slow
path on subnormal operands is an x86 core's, and what a user needs to know is what it costs there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from deploysparse.backends.feeds import make_feeds
from deploysparse.backends.onnxruntime import OnnxRuntimeBackend
from deploysparse.denormals import flushed_copy
from deploysparse.records import attribute_record


@dataclass
class DenormalCost:
    """Latency of the model as it is and with its denormal weights flushed, timed side by side."""

    batch: int
    as_is_ms: float
    flushed_ms: float
    runs: int

    @property
    def slowdown(self) -> float:
        return self.as_is_ms / self.flushed_ms if self.flushed_ms else float("nan")

    def to_json(self) -> dict:
        return attribute_record(self, "batch", "as_is_ms", "flushed_ms", "slowdown", "runs")


def measure_cost(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]],
    rounds: int = 5,
    iters: int = 5,
    threads: int | None = None,
    seed: int = 0,
) -> DenormalCost:
    """Time `model` as it is and flushed on ONNX Runtime CPU (all graph optimisations, as `bench`).

    The two models run interleaved (backends/timing.py): `rounds` rounds of `iters` runs each, the
    order alternating from round to round, so both see the same load on a shared machine; each
    figure is the median of its runs. The batch is the analysed input shape's (usually 1).
    """
    flushed, _ = flushed_copy(model)
    batch = int(next(iter(input_shapes.values()))[0]) if input_shapes else 1
    timer = OnnxRuntimeBackend(providers=["CPUExecutionProvider"]).timer(batch, threads)
    feeds = make_feeds(model, input_shapes, seed=seed)
    as_is_ms, flushed_ms = timer.interleaved_ms([model, flushed], feeds, rounds=rounds, per_round=iters)
    return DenormalCost(batch=batch, as_is_ms=as_is_ms, flushed_ms=flushed_ms, runs=rounds * iters)
