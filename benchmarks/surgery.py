"""Seconds and peak extra memory of analyze and surgery on ResNet-18/50/101-sized graphs.

Target (issue: foundation): analyze + prune of a ResNet-50-sized graph (25M params) in under 3 s
and under 2x the model's size in extra memory on 2 cores.

    python benchmarks/surgery.py [--depths 18,50,101]

Prints one table; exports the models into a temporary folder first (not timed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from deploysparse.graph.analysis import analyze_graph
from deploysparse.graph.dead import find_dead
from deploysparse.graph.surgery import rewrite_graph
from deploysparse.modelio import load_model
from deploysparse.plan import Plan
from deploysparse.zoo.resnet import resnet


def export(depth: int, folder: Path) -> Path:
    from deploysparse.frontend.torch_export import export_onnx

    path = folder / f"resnet{depth}.onnx"
    export_onnx(resnet(depth).eval(), torch.randn(1, 3, 224, 224), path, keep_bn=False)
    return path


def half_plan(ga) -> Plan:
    """Keep a random half of every prunable group (the surgery's worst case touches every layer)."""
    rng = np.random.default_rng(0)
    keep = {}
    for g in ga.prunable_groups:
        n = max(g.block, (g.size // 2) // g.block * g.block)
        keep[g.id] = np.sort(rng.choice(g.size, n, replace=False))
    return Plan(keep=keep)


class PeakRss:
    """Samples the process' resident memory every few ms; `.peak` is the highest seen (bytes)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page)
            time.sleep(0.002)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(path: Path) -> dict:
    """Time and peak extra resident memory of analyze + dead-filter check + surgery, the model
    already loaded (as `deploysparse prune` does after reading the file)."""
    model = load_model(path)
    params = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    model_bytes = sum(int(np.prod(i.dims)) * 4 for i in model.graph.initializer)
    before = rss()
    with PeakRss() as peak:
        t0 = time.perf_counter()
        ga = analyze_graph(model, copy=False)
        find_dead(ga)
        t1 = time.perf_counter()
        result = rewrite_graph(ga, half_plan(ga))
        t2 = time.perf_counter()
    kept = sum(int(np.prod(i.dims)) for i in result.model.graph.initializer)
    return {
        "params": params,
        "analyze_s": t1 - t0,
        "surgery_s": t2 - t1,
        "total_s": t2 - t0,
        "peak_extra_mb": (peak.peak - before) / 2**20,
        "model_mb": model_bytes / 2**20,
        "groups": len(ga.groups),
        "params_after": kept,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="18,50,101")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for depth in [int(d) for d in args.depths.split(",")]:
            rows.append((depth, measure(export(depth, Path(tmp)))))
    print(
        "| model | params | groups | analyze s | surgery s | total s | peak extra MB | model MB | extra/model |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for depth, r in rows:
        print(
            f"| resnet{depth} | {r['params'] / 1e6:.1f}M | {r['groups']} | {r['analyze_s']:.2f} | "
            f"{r['surgery_s']:.2f} | {r['total_s']:.2f} | {r['peak_extra_mb']:.0f} | {r['model_mb']:.0f} | "
            f"{r['peak_extra_mb'] / r['model_mb']:.2f} |"
        )


if __name__ == "__main__":
    main()
