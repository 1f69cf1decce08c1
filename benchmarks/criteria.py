"""Time each pruning criterion's plan (scores + budget search) on CIFAR ResNet-20 with 32 calibration images.

    PYTHONPATH=. python benchmarks/criteria.py

Weights are the seeded initialisation (timing only; no accuracy is claimed).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deploysparse.criteria import CRITERIA, CriterionContext, plan_with
from deploysparse.frontend.torch_export import export_onnx
from deploysparse.graph.analysis import analyze_graph
from deploysparse.modelio import load_model
from deploysparse.zoo.resnet import cifar_resnet


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(cifar_resnet(20).eval(), torch.randn(1, 3, 32, 32), Path(folder) / "r20.onnx")
        model = load_model(path)
    ga = analyze_graph(model)
    feeds = {
        model.graph.input[0].name: np.random.default_rng(0).normal(size=(32, 3, 32, 32)).astype(np.float32)
    }
    print(f"{'criterion':12s} {'--ratio 0.3':>12s} {'--flops-target 0.5':>19s}")
    for name in sorted(CRITERIA):
        times = []
        for budget in ({"ratio": 0.3}, {"flops_target": 0.5}):
            start = time.perf_counter()
            plan_with(name, ga, CriterionContext(ga, calib=feeds), **budget)
            times.append(time.perf_counter() - start)
        print(f"{name:12s} {times[0]:11.2f}s {times[1]:18.2f}s")


if __name__ == "__main__":
    main()
