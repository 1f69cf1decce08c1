"""Statistics of repeated timings: which runs were outliers, and how much a latency changed between
two reports, with a confidence interval a CI gate can act on.

Why the run, not the call, is the unit: the calls of one run share the machine's state of that
moment (another job's load, the clock, what the cache holds), so a busy neighbour shifts a whole run
by 10% while its calls vary by 1%. An interval computed from calls as if they were independent is
several times too narrow and fails identical runs (issue 23: 2 of 4 A/A checks failed). The interval
here is a *cluster bootstrap* (resampling at the top level of nested data, Davison & Hinkley 1997,
section 3.8): resample whole runs with replacement, pool their calls, recompute the statistic (a
quantile of the pooled calls, or its ratio to a reference model timed in the same rounds), and read
the change's interval off the resampled values. It assumes no distribution, treats p50 and p99
alike, keeps each run of the compact model paired with the reference run timed beside it, and is
deterministic (a fixed seed). A percentile bootstrap over few clusters is too narrow by about
sqrt((n-1)/n); each side's resampled values are widened by that factor (Hesterberg 2015,
"expanded percentile").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95  # two-sided: "regressed" needs the change above the tolerance at 97.5% one-sided
RESAMPLES = 2000
MIN_RUNS = 3  # fewer runs than this show no run-to-run noise to build an interval from
OUTLIER_Z = 3.5  # modified z-score above which a run is an outlier (Iglewicz & Hoaglin 1993)
OUTLIER_FLOOR = 0.01  # runs within 1% of the median are never outliers, even when all others agree
_MAD_TO_SD = 1.4826  # the MAD of a normal sample times this estimates its standard deviation
_CHUNK = 250  # resamples computed at once (bounds memory for long runs)


@dataclass(frozen=True)
class Runs:
    """One model's calls at one batch size, one row per run (ms). With `reference` (the same shape
    of rows), the calls of a reference model timed in the same rounds: the statistic is then the
    ratio of the two models' quantiles, which cancels the machine's speed."""

    values: np.ndarray
    reference: np.ndarray | None = None

    @classmethod
    def of(
        cls, values: Sequence[Sequence[float]], reference: Sequence[Sequence[float]] | None = None
    ) -> Runs:
        """Rows of calls as arrays; rows of unequal length are refused (ValueError)."""
        return cls(
            np.asarray(values, dtype=float), None if reference is None else np.asarray(reference, float)
        )

    @property
    def runs(self) -> int:
        return int(self.values.shape[0])

    @property
    def calls(self) -> int:
        """Calls behind the statistic (of the model, not counting the reference)."""
        return int(self.values.size)

    def statistic(self, quantile: float) -> float:
        """The `quantile` of all calls pooled (divided by the reference's, with one)."""
        return float(np.exp(self._log_statistic(self.values[None], self._ref(None), quantile)[0]))

    def per_run(self, quantile: float) -> np.ndarray:
        """The statistic of each run on its own (for the run-to-run spread and outliers)."""
        value = np.quantile(self.values, quantile, axis=1)
        return value / np.quantile(self.reference, quantile, axis=1) if self.reference is not None else value

    def resampled(self, quantile: float, rng: np.random.Generator, resamples: int) -> np.ndarray:
        """The log-statistic of `resamples` bootstrap resamples of whole runs."""
        out = np.empty(resamples)
        for start in range(0, resamples, _CHUNK):
            picks = rng.integers(0, self.runs, size=(min(_CHUNK, resamples - start), self.runs))
            out[start : start + len(picks)] = self._log_statistic(
                self.values[picks], self._ref(picks), quantile
            )
        return out

    def _ref(self, picks: np.ndarray | None) -> np.ndarray | None:
        if self.reference is None:
            return None
        return self.reference[None] if picks is None else self.reference[picks]

    @staticmethod
    def _log_statistic(values: np.ndarray, reference: np.ndarray | None, quantile: float) -> np.ndarray:
        """log of the pooled quantile of each resample (axis 0), less the reference's log quantile."""
        pooled = np.quantile(values.reshape(len(values), -1), quantile, axis=1)
        log = np.log(np.maximum(pooled, 1e-12))
        if reference is not None:
            log -= np.log(
                np.maximum(np.quantile(reference.reshape(len(reference), -1), quantile, axis=1), 1e-12)
            )
        return log


@dataclass(frozen=True)
class Change:
    """How a statistic changed from the baseline: `estimate` = current / baseline - 1 and its
    confidence interval [low, high] (same unit); `log_variance` is each side's (current, baseline)
    bootstrap variance of the log-statistic, `runs` each side's run count: what `runs_to_decide` needs."""

    estimate: float
    low: float
    high: float
    confidence: float
    log_variance: tuple[float, float]
    runs: tuple[int, int]

    def runs_to_decide(self, tolerance: float) -> int | None:
        """About how many runs the current report would need for the interval to fall wholly on one
        side of `tolerance` against this baseline (the interval's width shrinks as 1/sqrt(runs));
        None when no number would do: the baseline's own noise, or an estimate sitting on the
        tolerance, leaves too little room (then the baseline needs more runs too)."""
        z = NormalDist().inv_cdf(0.5 + self.confidence / 2)
        margin = abs(math.log1p(self.estimate) - math.log1p(tolerance)) / z
        current_var, baseline_var = self.log_variance
        room = margin**2 - baseline_var
        if room <= 0:
            return None
        return max(math.ceil(current_var * self.runs[0] / room), self.runs[0] + 1)


def change(
    current: Runs,
    baseline: Runs,
    quantile: float,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Change:
    """The change of the `quantile` statistic from `baseline` to `current`, with its cluster-bootstrap
    interval at `confidence` (see the module's docstring). Each side needs at least MIN_RUNS runs."""
    if current.runs < MIN_RUNS or baseline.runs < MIN_RUNS:
        raise ValueError(f"an interval needs at least {MIN_RUNS} runs per side")
    rng = np.random.default_rng(seed)
    sides = []
    for runs in (current, baseline):
        log = runs.resampled(quantile, rng, resamples)
        centre = log.mean()
        sides.append(centre + (log - centre) * math.sqrt(runs.runs / (runs.runs - 1)))
    diff = sides[0] - sides[1]
    estimate = math.log(current.statistic(quantile)) - math.log(baseline.statistic(quantile))
    low, high = np.quantile(diff, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Change(
        estimate=math.expm1(estimate),
        low=math.expm1(float(low)),
        high=math.expm1(float(high)),
        confidence=confidence,
        log_variance=(float(sides[0].var()), float(sides[1].var())),
        runs=(current.runs, baseline.runs),
    )


def spread(values: Sequence[float]) -> float:
    """Run-to-run spread relative to the median: 1.4826 x MAD / median, a standard deviation that
    one disturbed run does not inflate."""
    array = np.asarray(values, dtype=float)
    median = float(np.median(array))
    return _MAD_TO_SD * float(np.median(np.abs(array - median))) / median if median else 0.0


def outlier_runs(values: Sequence[float]) -> list[int]:
    """Indices of runs whose value lies more than OUTLIER_Z robust standard deviations (1.4826 x MAD,
    at least OUTLIER_FLOOR of the median) from the median run: runs a noisy neighbour disturbed.
    Fewer than MIN_RUNS runs have no outliers (nothing to compare with)."""
    array = np.asarray(values, dtype=float)
    if len(array) < MIN_RUNS:
        return []
    median = float(np.median(array))
    scale = max(_MAD_TO_SD * float(np.median(np.abs(array - median))), OUTLIER_FLOOR * abs(median))
    if scale == 0:
        return []
    return [int(i) for i in np.flatnonzero(np.abs(array - median) / scale > OUTLIER_Z)]
