"""How alike two models' outputs are, in the two figures that survive quantisation: the cosine of the
outputs and, for class scores (N, classes), the share of samples whose top-1 class is the same.

`validate` reports them per output against its tolerances; the int8 build ranks calibration methods
and layer choices by them on held-out data. Written once so both read the same figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flattened arrays, in float64, clipped to [-1, 1] (rounding can put an
    identical pair at 1.0000000000000002); 1.0 when both are all zeros."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.clip(a @ b / norms, -1.0, 1.0))


def same_top1(reference: np.ndarray, other: np.ndarray) -> np.ndarray | None:
    """Per sample, whether both outputs pick the same class; None unless the output is (N, classes>1)."""
    if reference.ndim != 2 or reference.shape[1] < 2:
        return None
    return reference.argmax(axis=1) == other.argmax(axis=1)


@dataclass(frozen=True)
class Agreement:
    """The worst output's figures: the lowest cosine, the lowest top-1 agreement (None: no class scores)."""

    cosine: float
    top1: float | None

    @property
    def figure(self) -> float:
        """What a choice is judged by: top-1 agreement for a classifier, else the cosine."""
        return self.cosine if self.top1 is None else self.top1

    def key(self) -> tuple[float, float]:
        """Sort key, larger is better: the figure, then the cosine."""
        return (self.figure, self.cosine)

    def to_json(self) -> dict:
        return {"cosine": self.cosine, "top1_agreement": self.top1}


def agreement(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> Agreement:
    """Agreement of `other`'s outputs with `reference`'s (same names), over every output."""
    cosines, top1 = [], []
    for name, ref in reference.items():
        cosines.append(cosine(ref, other[name]))
        same = same_top1(ref, other[name])
        if same is not None:
            top1.append(float(np.mean(same)))
    return Agreement(min(cosines), min(top1) if top1 else None)
