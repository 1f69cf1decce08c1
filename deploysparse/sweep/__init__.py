"""Sweeps: run a recipe over criteria x budgets x precisions x backends x batch sizes (x models) and
pick the best point, in-process or as Ray Tune trials.

config (sweep.yaml) -> inputs (models and data by content hash) -> point (one recipe run) ->
store (points/<key>/) -> select (rule, Pareto) -> html (sweep.html); runner ties them together,
ray_runner runs the points on Ray.
"""

from __future__ import annotations

from deploysparse.sweep.config import Sweep, SweepError, load_sweep
from deploysparse.sweep.runner import SweepOutcome, run_sweep

__all__ = ["Sweep", "SweepError", "SweepOutcome", "load_sweep", "run_sweep"]
