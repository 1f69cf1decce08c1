"""Per-channel statistics of activations, reduced batch by batch in float64.

Data-driven criteria (inactive, similarity, PFP) and the torch front end read a tensor's channels as
count, mean, |mean|, std, min, max, the fraction of positive values and, on request, the correlation
between channels. Streaming reductions make statistics over many batches equal those over one, so no
calibration set has to fit in memory at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deploysparse.errors import CalibrationError


@dataclass
class ChannelStats:
    """Statistics of one tensor per channel (axis 1), over batch and spatial positions."""

    count: int  # values seen per channel
    mean: np.ndarray
    mean_abs: np.ndarray
    std: np.ndarray
    max: np.ndarray
    min: np.ndarray
    frac_positive: np.ndarray  # fraction of values > 0
    corr: np.ndarray | None = None  # (C, C) Pearson correlation, when asked for; 0 for a constant channel


class ChannelStatsAccumulator:
    """Streaming reductions in float64, so statistics over many batches equal those over one."""

    def __init__(self, correlation: bool = False) -> None:
        self.correlation = correlation
        self.count = 0
        self._sum: np.ndarray | None = None

    def add(self, values: np.ndarray) -> None:
        """Add a batch shaped (N, C, ...) ."""
        if values.ndim < 2:
            raise CalibrationError(f"statistics need a channel axis; got a tensor of shape {values.shape}")
        flat = np.moveaxis(values, 1, 0).reshape(values.shape[1], -1).astype(np.float64)
        if self._sum is None:
            channels = flat.shape[0]
            self._sum = np.zeros(channels)
            self._sum_abs = np.zeros(channels)
            self._sum_sq = np.zeros(channels)
            self._positive = np.zeros(channels)
            self._max = np.full(channels, -np.inf)
            self._min = np.full(channels, np.inf)
            self._outer = np.zeros((channels, channels)) if self.correlation else None
        self.count += flat.shape[1]
        self._sum += flat.sum(axis=1)
        self._sum_abs += np.abs(flat).sum(axis=1)
        self._sum_sq += np.square(flat).sum(axis=1)
        self._positive += (flat > 0).sum(axis=1)
        if flat.shape[1]:
            self._max = np.maximum(self._max, flat.max(axis=1))
            self._min = np.minimum(self._min, flat.min(axis=1))
        if self._outer is not None:
            self._outer += flat @ flat.T

    def result(self) -> ChannelStats:
        if self._sum is None or self.count == 0:
            raise CalibrationError("no calibration values were seen")
        n = self.count
        mean = self._sum / n
        var = self._sum_sq / n - mean**2
        # A constant channel (a dead filter) leaves only cancellation error here; call it exactly 0.
        var = np.where(var <= 1e-12 * mean**2, 0.0, np.maximum(var, 0.0))
        std = np.sqrt(var)
        corr = None
        if self._outer is not None:
            cov = self._outer / n - np.outer(mean, mean)
            denom = np.outer(std, std)
            with np.errstate(divide="ignore", invalid="ignore"):
                corr = np.where(denom > 0, cov / np.where(denom > 0, denom, 1.0), 0.0)
            np.fill_diagonal(corr, 1.0)
            corr = np.clip(corr, -1.0, 1.0)
        return ChannelStats(
            count=n,
            mean=mean,
            mean_abs=self._sum_abs / n,
            std=std,
            max=self._max.copy(),
            min=self._min.copy(),
            frac_positive=self._positive / n,
            corr=corr,
        )
