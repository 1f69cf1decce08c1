"""Torch-Pruning's uniform L1 schedule at a given fraction of the MACs: the baseline users would reach for.

Torch-Pruning 1.6 (`BasePruner`, `MagnitudeImportance(p=1)`, `global_pruning=False`) removes the same
fraction of channels from every group it finds, rounded to `round_to`; it has no MACs budget. The
ratio is searched here (a grid, then bisection) until the pruned module's MACs match the target.
Kept counts move in steps of `round_to` in every group at once, so MACs are a staircase in the ratio
and the closest step can sit a few percent from the target (MobileNetV2 at 50%: 0.522 or 0.480);
the benchmark prints the MACs each compact model really kept.

MACs are counted as deploysparse counts them on the exported graph (`graph.cost`: Conv and Gemm
multiply-accumulates per sample, output elements x input channels per group x kernel area, and
in x out features for a Linear), with forward hooks on the module: no export per search step. The
benchmark checks that the two counters agree on the original before relying on this one.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Iterator

import torch
from torch import nn

ROUND_TO = 16
GRID_STEP = 0.05
MAX_RATIO = 0.9


def module_macs(module: nn.Module, example: torch.Tensor) -> int:
    """Conv2d and Linear multiply-accumulates of one sample of `example` (deploysparse's definition)."""
    total = 0

    def hook(layer: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        per_sample = output[0].numel()
        if isinstance(layer, nn.Conv2d):
            total += (
                per_sample * (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
            )
        else:
            total += per_sample * layer.in_features

    handles = [
        m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        module.eval()
        with torch.no_grad():
            module(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return total


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Torch-Pruning prints and warns about things the benchmark does not use (e.g. unwrapped params)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def classifier(module: nn.Module) -> list[nn.Module]:
    """The layer writing the class scores (the last Linear): Torch-Pruning must not prune its outputs."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


class UniformL1:
    """Torch-Pruning's uniform L1 pruning of one trained module, at any ratio or MACs fraction.

    `trace` is the example Torch-Pruning traces its dependency graph with (any input size: the graph
    does not depend on it); `count` the input the MACs are counted at (the latency export's size).
    Fractions found are remembered, so the next target of the same module reuses the grid.
    """

    def __init__(self, module: nn.Module, trace: torch.Tensor, count: torch.Tensor, round_to: int = ROUND_TO):
        self.module = module.eval()
        self.trace = trace
        self.count = count
        self.round_to = round_to
        self.full_macs = module_macs(module, count)
        self.fractions: dict[float, float] = {0.0: 1.0}

    def prune(self, ratio: float) -> nn.Module:
        """A pruned copy: every group loses `ratio` of its channels (rounded), its lowest-L1 ones."""
        import torch_pruning as tp

        pruned = copy.deepcopy(self.module).eval()
        with _quiet():
            pruner = tp.pruner.BasePruner(
                pruned,
                self.trace,
                importance=tp.importance.MagnitudeImportance(p=1),
                pruning_ratio=ratio,
                global_pruning=False,
                round_to=self.round_to,
                ignored_layers=classifier(pruned),
            )
            pruner.step()
        self.fractions[ratio] = module_macs(pruned, self.count) / self.full_macs
        return pruned.eval()

    def fraction(self, ratio: float) -> float:
        """MACs kept at `ratio` (remembered, else pruned once to count them)."""
        if ratio not in self.fractions:
            self.prune(ratio)
        return self.fractions[ratio]

    def at(self, macs_fraction: float, tolerance: float = 0.005, steps: int = 10) -> tuple[nn.Module, float]:
        """(pruned module, ratio) whose MACs fraction is closest to `macs_fraction`.

        MACs kept are not monotone in the ratio: once a ratio rounds a small group's channels down to
        zero, Torch-Pruning leaves that group whole, and a larger ratio can keep more MACs than a
        smaller one (ResNet-8 at round_to 16: 0.59 at ratio 0.475, 1.0 at 0.83). So a grid of ratios
        (GRID_STEP apart, once per module) finds the first interval where the MACs cross the target,
        and bisection refines inside it, stopped once within `tolerance` of the target relative to it
        or after `steps` prunings.
        """
        grid = [round(GRID_STEP * i, 4) for i in range(int(MAX_RATIO / GRID_STEP) + 1)]
        kept = [self.fraction(r) for r in grid]
        crossing = next((i for i in range(len(grid) - 1) if kept[i] > macs_fraction >= kept[i + 1]), None)
        if crossing is not None:
            lo, hi = grid[crossing], grid[crossing + 1]
            for _ in range(steps):
                mid = (lo + hi) / 2
                fraction = self.fraction(mid)
                if abs(fraction / macs_fraction - 1) <= tolerance:
                    break
                if fraction > macs_fraction:
                    lo = mid
                else:
                    hi = mid
        ratio = min(self.fractions, key=lambda r: (abs(self.fractions[r] - macs_fraction), r))
        return self.prune(ratio), ratio

    def bracket(self, macs_fraction: float) -> tuple[float | None, float | None]:
        """The MACs fractions found closest below (or at) and above the target: the staircase's two
        steps around it, for saying how close equal MACs can get."""
        below = [f for f in self.fractions.values() if f <= macs_fraction]
        above = [f for f in self.fractions.values() if f > macs_fraction]
        return max(below, default=None), min(above, default=None)
