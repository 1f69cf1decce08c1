"""Hand-built report.json dicts for the check gate and report page tests (a small ResNet-like CNN)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from deploysparse.recipe import load_recipe

# The machine of every factory report (backends/machine.fingerprint's keys).
FINGERPRINT = {
    "arch": "x86_64",
    "cpu": "AMD EPYC 7B13",
    "cores": 2,
    "cpu_flags": ["avx", "avx2", "f16c", "fma"],
    "device": "CPU: AMD EPYC 7B13 (2 cores)",
    "backends": {"onnxruntime": "1.32.0"},
    "threads": 2,
}
CALLS = 20  # calls per run in factory reports


def _samples(p50: float, p99_over: float) -> list[float]:
    """CALLS call times whose median is `p50` (offsets symmetric about it) and whose slowest is
    `p50 x p99_over`: a run as `deploysparse run` records it, without randomness."""
    offsets = np.linspace(-0.03, 0.03, CALLS)
    offsets[-1] = p99_over - 1
    offsets[0] = -(p99_over - 1) if p99_over - 1 < 0.5 else offsets[0]
    return [float(f"{p50 * (1 + o):.4g}") for o in offsets]


def _point(batch: int, p50s: list[float], p99_over: float) -> dict[str, Any]:
    runs = [
        {"p50_ms": p, "p99_ms": round(p * p99_over, 4), "samples_ms": _samples(p, p99_over)} for p in p50s
    ]
    pooled = sorted(p50s)[len(p50s) // 2]
    return {
        "batch": batch,
        "p50_ms": pooled,
        "p90_ms": round(pooled * 1.1, 4),
        "p99_ms": round(pooled * p99_over, 4),
        "throughput_per_s": round(batch * 1000 / pooled, 2),
        "runs": runs,
    }


def make_report() -> dict[str, Any]:
    """A complete, valid report as `deploysparse run` writes it; tests copy and alter it."""
    groups = [
        ("g0", "stem.conv", 32, 24, 0, True),
        ("g1", "layer1.0.conv1", 64, 40, 0, True),
        ("g2", "layer1.0.conv2, layer1.1.conv2 (+1)", 64, 64, 64, False),
        ("g3", "layer2.0.conv1", 128, 96, 0, True),
        ("g4", "layer2.0.conv2, layer2.0.downsample", 128, 112, 0, True),
        ("g5", "head.fc", 10, 10, 10, False),
    ]
    return copy.deepcopy(
        {
            "schema_version": 1,
            "model": {
                "path": "models/resnet_small.onnx",
                "sha256": "3f1c9a0d5e7b2c4a6f8e0d1c3b5a79e2f4d6c8b0a2e4f6d8c0b2a4e6f8d0c2b4",
                "inputs": {"input": [1, 3, 32, 32]},
            },
            "recipe": load_recipe("x86-cpu-onnxruntime").to_report(),
            "target": {"backend": "onnxruntime", "precision": "fp32", "device": "x86_64, 2 cores"},
            "versions": {"deploysparse": "0.1.0", "onnx": "1.23.0", "onnxruntime": "1.32.0", "torch": None},
            "cost": {
                "params_before": 1_250_000,
                "params_after": 880_000,
                "flops_before": 150_000_000,
                "flops_after": 98_000_000,
            },
            "pruning": {
                "criterion": "dead",
                "groups": len(groups),
                "groups_pruned": 4,
                "channels_total": sum(g[2] for g in groups),
                "channels_removed": sum(g[2] - g[3] for g in groups),
                "pinned": [
                    {
                        "group": "g2",
                        "op": "Add",
                        "node": "layer1.1/Add",
                        "reason": "residual sum with the stem's output, which a graph output reads",
                    },
                    {"group": "g5", "op": "Output", "node": "logits", "reason": "graph output"},
                ],
            },
            "plan": {
                "groups": [
                    {
                        "id": i,
                        "label": label,
                        "size": size,
                        "kept": kept,
                        "pinned": pinned,
                        "prunable": prunable,
                    }
                    for i, label, size, kept, pinned, prunable in groups
                ],
                "notes": ["dead filters of g1 folded into layer1.0.conv2's bias (relu(beta) > 0)"],
            },
            "validation": {
                "samples": 256,
                "max_abs_err": 2.4e-6,
                "max_rel_err": 8.1e-5,
                "cosine": 0.99999997,
                "top1_agreement": 1.0,
                "accuracy_original": 0.9466,
                "accuracy_compact": 0.9466,
                "passed": True,
                "failures": [],
            },
            "latency": {
                "original": [
                    _point(1, [2.10, 2.05, 2.31, 2.08, 2.12], 1.4),
                    _point(8, [11.9, 12.4, 12.1, 12.6, 12.0], 1.3),
                ],
                "compact": [
                    _point(1, [1.42, 1.40, 1.51, 1.39, 1.44], 1.4),
                    _point(8, [7.9, 8.3, 8.0, 8.4, 8.1], 1.3),
                ],
                "fingerprint": FINGERPRINT,
                "timing": {
                    "rounds": 5,
                    "iters": CALLS,
                    "warmup": 10,
                    "affinity": [0, 1],
                    "load_average": [0.4, 0.5],
                },
            },
            "warnings": ["group g2 pinned by Add 'layer1.1/Add': see Pinned spaces"],
            "timestamps": {"started": "2026-11-26T09:14:02+00:00", "finished": "2026-11-26T09:14:31+00:00"},
            "artifacts": {
                "compact.onnx": "9b1e2a7c4d6f8e0a1c3b5d7f9e1a3c5b7d9f1e3a5c7b9d1f3e5a7c9b1d3f5e7a",
                "plan.json": "0c2e4a6b8d0f2e4c6a8b0d2f4e6c8a0b2d4f6e8c0a2b4d6f8e0c2a4b6d8f0e2c",
            },
        }
    )
