"""backends/timing.py: the order runs are made in and what is counted (no timed assertions)."""

from __future__ import annotations

import numpy as np

from deploysparse.backends import get_backend
from deploysparse.backends.timing import fastest_ms, interleaved, interleaved_medians_ms, timed_runs
from deploysparse.latency import LayerShape


def test_interleaved_reverses_the_order_every_other_round() -> None:
    calls: list[tuple[str, int]] = []
    tasks = [lambda r, name=name: calls.append((name, r)) or name for name in "abc"]
    results = interleaved(tasks, rounds=3, per_round=2)
    assert [name for name, _ in calls] == list("aabbcc" + "ccbbaa" + "aabbcc")
    assert [r for _, r in calls] == [0] * 6 + [1] * 6 + [2] * 6
    assert results == [["a"] * 6, ["b"] * 6, ["c"] * 6]


def test_timed_runs_warm_up_untimed_and_report_every_timed_run() -> None:
    calls, advanced = [], []
    seconds = timed_runs(lambda: calls.append(1), iters=4, warmup=3, advance=advanced.append)
    assert len(calls) == 7 and len(advanced) == 7 and seconds.shape == (4,) and np.all(seconds >= 0)
    count = []
    assert fastest_ms(lambda: count.append(1), warmup=1, iters=5) >= 0 and len(count) == 6


def test_interleaved_medians_warm_each_run_first() -> None:
    order: list[str] = []
    medians = interleaved_medians_ms(
        [lambda: order.append("a"), lambda: order.append("b")], rounds=2, warmup=2
    )
    assert order == ["a", "a", "b", "b", "a", "b", "b", "a"] and len(medians) == 2


def test_a_timer_times_model_protos_at_its_batch(tmp_path) -> None:
    """ModelProtos are written to a temporary folder; without feeds the timer makes them at its batch."""
    timer = get_backend("onnxruntime").timer(batch=3, threads=1)
    layer = LayerShape("dense", 4, 4, batch=3).model(4, 4)
    assert timer.name == "onnxruntime" and timer.version()
    assert timer.fastest_ms(layer) > 0
    first, second = timer.interleaved_ms([layer, layer], rounds=2)
    assert first > 0 and second > 0
