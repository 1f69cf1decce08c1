"""backends/timing.py: the order runs are made in and what is counted (no timed assertions)."""

from __future__ import annotations

import numpy as np

from deploysparse.backends import get_backend
from deploysparse.backends.timing import (
    SETTLE_WINDOW,
    SETTLE_WINDOWS_MAX,
    fastest_ms,
    interleaved,
    interleaved_medians_ms,
    settled,
    timed_runs,
    warm_up,
)
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


def test_settled_means_the_last_window_is_no_faster_than_the_one_before() -> None:
    warming = [5.0, 4.0, 3.0, 2.5, 2.2, 2.0, 1.9, 1.8, 1.7, 1.6]  # still getting faster
    assert not settled(warming)
    flat = [5.0, 3.0, 2.0, 2.0, 2.0, 2.01, 1.99, 2.0, 2.02, 2.0]
    assert settled(flat)
    assert settled([2.0] * 5 + [1.97, 1.98, 1.97, 1.99, 1.96])  # 1.5% faster: within the 2% tolerance
    noisy_up = [1.0] * 5 + [1.5, 1.6, 1.4, 1.5, 1.7]  # slower is noise, not warm-up
    assert settled(noisy_up)
    assert not settled([1.0] * 9)  # fewer than two windows: cannot judge


def test_warm_up_makes_at_least_the_minimum_and_stops_at_the_limit() -> None:
    calls: list[int] = []
    advanced: list[int] = []
    warm = warm_up(lambda: calls.append(1), 3, advance=advanced.append)
    minimum = 2 * SETTLE_WINDOW  # two windows at least, to judge
    assert minimum <= warm.calls == len(calls) <= minimum + SETTLE_WINDOWS_MAX * SETTLE_WINDOW
    assert (warm.calls - minimum) % SETTLE_WINDOW == 0
    assert advanced == [3]  # the progress bar counts the minimum asked for
    assert warm_up(lambda: calls.append(1), 0).calls == 0  # no warm-up asked: none made


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
