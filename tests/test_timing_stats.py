"""timing_stats: the cluster-bootstrap change and its interval, runs to decide, outlier runs.

Synthetic timings from seeded generators: each run gets its own machine factor (the noise that
moves a whole run) and each call its own; nothing here is timed, so every figure is deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from deploysparse.timing_stats import MIN_RUNS, Runs, change, outlier_runs, spread


def runs(
    seed: int,
    factor: float = 1.0,
    n_runs: int = 15,
    calls: int = 20,
    run_sd: float = 0.02,
    call_sd: float = 0.03,
) -> np.ndarray:
    """Call times (ms) around 2 ms x `factor`: a log-normal factor per run and per call."""
    rng = np.random.default_rng(seed)
    per_run = rng.normal(0.0, run_sd, size=(n_runs, 1))
    return 2.0 * factor * np.exp(per_run + rng.normal(0.0, call_sd, size=(n_runs, calls)))


def test_a_known_shift_is_measured_and_its_interval_excludes_the_tolerance() -> None:
    measured = change(Runs(runs(1, factor=1.25)), Runs(runs(2)), 0.5)
    assert measured.low < measured.estimate < measured.high
    assert abs(measured.estimate - 0.25) < 0.03  # run noise 2%: 15 runs a side pin the median to ~1%
    assert measured.low > 0.10  # beyond a 10% tolerance


def test_identical_machines_give_an_interval_around_zero_inside_the_tolerance() -> None:
    for seed in range(5):
        measured = change(Runs(runs(10 + seed)), Runs(runs(20 + seed)), 0.5)
        assert measured.low < 0 < measured.high
        assert measured.low > -0.10 and measured.high < 0.10


def test_wide_run_noise_gives_an_interval_wider_than_the_tolerance() -> None:
    """Runs that vary by 15% (a loaded runner) cannot show a 10% change with 5 runs: the interval
    straddles the tolerance, and more runs would narrow it."""
    measured = change(Runs(runs(3, n_runs=5, run_sd=0.15)), Runs(runs(4, n_runs=5, run_sd=0.15)), 0.5)
    assert measured.low < 0.10 < measured.high
    assert measured.high - measured.low > 0.20
    needed = measured.runs_to_decide(0.10)
    assert needed is None or needed > 5


def test_runs_to_decide_follows_the_interval_width() -> None:
    """The interval narrows as 1/sqrt(runs): four times the runs halve its width."""
    few = change(Runs(runs(5, n_runs=8, run_sd=0.06)), Runs(runs(6, n_runs=8, run_sd=0.06)), 0.5)
    many = change(Runs(runs(5, n_runs=32, run_sd=0.06)), Runs(runs(6, n_runs=32, run_sd=0.06)), 0.5)
    ratio = (many.high - many.low) / (few.high - few.low)
    assert 0.3 < ratio < 0.7
    # against this baseline, a current report with 4x its runs shrinks only its own half of the noise
    assert few.runs_to_decide(0.10) is not None and few.runs_to_decide(0.10) > few.runs[0]


def test_runs_to_decide_is_none_when_the_baseline_alone_is_too_noisy() -> None:
    """+20% against a baseline whose 4 runs spread 0.5-2 ms: no number of current runs narrows the
    baseline's half of the interval below the 10-point margin."""
    quiet, noisy = Runs.of([[1.2]] * 15), Runs.of([[0.5], [1.0], [1.0], [2.0]])
    measured = change(quiet, noisy, 0.5)
    assert measured.estimate == pytest.approx(0.2)
    assert measured.low < 0.10 < measured.high
    assert measured.runs_to_decide(0.10) is None


def test_the_interval_comes_from_runs_not_calls() -> None:
    """Calls inside a run share its machine factor: an interval over calls as if independent would
    be far too narrow. One run per side with 300 calls has no interval at all; 15 runs of 20 calls
    with 5% run noise give one as wide as that noise over sqrt(15) runs, not over sqrt(300) calls."""
    measured = change(Runs(runs(9, run_sd=0.05)), Runs(runs(10, run_sd=0.05)), 0.5)
    half_width = (measured.high - measured.low) / 2
    per_side = 0.05 / math.sqrt(15)
    assert half_width > 1.96 * math.sqrt(2) * per_side * 0.7  # near what 15 runs allow
    assert half_width > 5 * 1.96 * math.sqrt(2) * 0.03 / math.sqrt(300)  # far wider than calls would say
    with pytest.raises(ValueError, match=f"at least {MIN_RUNS} runs"):
        change(Runs(runs(1, n_runs=1, calls=300)), Runs(runs(2, n_runs=1, calls=300)), 0.5)


def test_a_reference_timed_in_the_same_runs_cancels_the_machine() -> None:
    """Relative statistic: a machine twice as slow, and runs that vary by 20%, leave the ratio of
    compact to reference, and its interval, as narrow as the calls allow."""
    rng = np.random.default_rng(11)

    def paired(machine: float) -> Runs:
        load = machine * np.exp(rng.normal(0.0, 0.2, size=(15, 1)))  # the whole round slowed alike
        reference = 3.0 * load * np.exp(rng.normal(0.0, 0.02, size=(15, 20)))
        compact = 2.0 * load * np.exp(rng.normal(0.0, 0.02, size=(15, 20)))
        return Runs(compact, reference)

    fast, slow = paired(1.0), paired(2.0)
    assert abs(slow.statistic(0.5) - 2 / 3) < 0.01
    measured = change(slow, fast, 0.5)
    assert -0.03 < measured.low < 0 < measured.high < 0.03
    absolute = change(Runs(slow.values), Runs(fast.values), 0.5)
    assert absolute.low > 0.3  # in milliseconds the slow machine reads as a regression


def test_tail_percentiles_use_the_pooled_calls() -> None:
    values = runs(12, n_runs=10, calls=100)
    assert Runs(values).statistic(0.99) == pytest.approx(float(np.quantile(values, 0.99)))
    slower_tail = values.copy()
    slower_tail[:, :3] *= 2.0  # 3% of the calls twice as slow: p99 moves, p50 does not
    tail = change(Runs(slower_tail), Runs(values), 0.99)
    middle = change(Runs(slower_tail), Runs(values), 0.5)
    assert tail.low > 0.5 and abs(middle.estimate) < 0.05


def test_the_same_inputs_give_the_same_interval() -> None:
    first = change(Runs(runs(13)), Runs(runs(14)), 0.5)
    assert change(Runs(runs(13)), Runs(runs(14)), 0.5) == first


def test_runs_of_unequal_length_are_refused() -> None:
    with pytest.raises(ValueError):
        Runs.of([[1.0, 2.0], [1.0]])


def test_outlier_runs_are_the_ones_far_from_the_median_run() -> None:
    values = [1.00, 1.02, 0.99, 1.01, 1.60, 1.00, 0.98]
    assert outlier_runs(values) == [4]
    assert outlier_runs([1.0, 1.0, 1.0, 1.03]) == []  # within the 1% floor x 3.5: not an outlier
    assert outlier_runs([1.0, 1.0, 1.0, 1.2]) == [3]
    assert outlier_runs([1.0, 3.0]) == []  # two runs: nothing to compare with
    assert spread([1.0, 1.0, 1.0, 1.0]) == 0.0
    assert spread([0.9, 1.0, 1.0, 1.1, 5.0]) == pytest.approx(
        1.4826 * 0.1, rel=1e-6
    )  # one wild run does not count
