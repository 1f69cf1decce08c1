"""benchmarks/latency_budget.py and its pieces at tiny sizes: the digits32 data, the cached training,
the MACs counter Torch-Pruning's bisection relies on, the Torch-Pruning baseline, and one whole run
on a narrow ResNet-18 (the same code path as ResNet-50 / MobileNetV2, in seconds).

The Torch-Pruning parts skip where torch_pruning is not installed: it comes with the `bench` extra,
which `make venv` (and so CI) does not install; the fallback baseline is tested everywhere.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import _digits32, criteria_allocation, latency_budget
from benchmarks._digits32 import (
    BATCH,
    Training,
    bn_reestimated_accuracy,
    digits32,
    recompute_bn_stats,
    trained,
)
from benchmarks._tp_uniform import UniformL1, module_macs
from deploysparse import api
from deploysparse.graph.cost import count_cost
from deploysparse.zoo.digits import load_digits_data
from deploysparse.zoo.mobilenet import mobilenet_v2
from deploysparse.zoo.resnet import cifar_resnet, resnet

needs_tp = pytest.mark.skipif(
    not latency_budget.HAVE_TP, reason="torch_pruning (the bench extra) not installed"
)


def tiny_net() -> nn.Module:
    """Two strided Conv-BN-ReLU layers, 4x4 pooling, Linear: learns digits in a second of CPU."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(256, 10),
        )


def test_digits32_repeats_the_16x16_digits_to_32x32_and_three_channels() -> None:
    images, labels = digits32("val", limit=5)
    small, small_labels = load_digits_data("val")
    assert images.shape == (5, 3, 32, 32) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, small_labels[:5])
    np.testing.assert_array_equal(images[:, 1], images[:, 0])
    np.testing.assert_array_equal(images[:, 2], images[:, 0])
    np.testing.assert_array_equal(images[:, 0, ::2, ::2], small[:5, 0])  # pixel repetition, exact
    np.testing.assert_array_equal(images[:, 0, 1::2, 1::2], small[:5, 0])


def test_recomputed_bn_statistics_are_the_averages_over_the_images() -> None:
    net = tiny_net()
    images = np.random.default_rng(0).standard_normal((2 * BATCH, 3, 8, 8)).astype(np.float32)
    recompute_bn_stats(net, images)
    with torch.no_grad():
        conv = net[0](torch.from_numpy(images)).double()
    norm = net[1]
    # Equal batches: the cumulative average of batch means is the mean over all images.
    np.testing.assert_allclose(norm.running_mean.double(), conv.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    # Each batch's unbiased variance averaged over the two batches.
    per_batch = [conv[i : i + BATCH].var(dim=(0, 2, 3), unbiased=True) for i in (0, BATCH)]
    np.testing.assert_allclose(norm.running_var.double(), sum(per_batch) / 2, rtol=1e-5)
    assert not net.training and norm.momentum == 0.1


def test_bn_reestimation_discards_stale_statistics_and_leaves_the_module_alone() -> None:
    net = _digits32.train(tiny_net(), Training(epochs=1, subset=4 * BATCH))
    val = digits32("val")
    stale = copy.deepcopy(net)
    stale[4].running_mean += 5.0  # what removing channels upstream does to a layer's input statistics
    before = stale[4].running_mean.clone()
    assert _digits32.accuracy(stale, *val) < _digits32.accuracy(net, *val) - 0.05  # the stats matter
    assert bn_reestimated_accuracy(stale) == bn_reestimated_accuracy(net)
    assert torch.equal(stale[4].running_mean, before)


def test_trained_weights_are_cached_and_reloaded_without_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    training = Training(epochs=1, subset=BATCH)
    first = trained("tiny", tiny_net, training, tmp_path)
    assert "tiny: trained 1 epochs" in capsys.readouterr().err
    cached = tmp_path / training.tag("tiny")
    assert cached.exists()
    assert not torch.equal(first[0].weight, tiny_net()[0].weight)  # training moved the weights

    def no_training(*_args, **_kwargs):
        raise AssertionError("trained again despite the cache")

    monkeypatch.setattr(_digits32, "train", no_training)
    again = trained("tiny", tiny_net, training, tmp_path)
    for name, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    assert Training(epochs=2, subset=BATCH).tag("tiny") != training.tag("tiny")


@pytest.mark.parametrize(
    "build",
    [lambda: cifar_resnet(8), lambda: mobilenet_v2(num_classes=10, width_mult=0.25)],
    ids=["resnet", "mbv2"],
)
def test_module_macs_count_what_the_graph_counter_counts(build, tmp_path: Path) -> None:
    """The bisection counts with forward hooks; its numbers must be deploysparse's, to the MAC."""
    module = build().eval()
    x = torch.randn(1, 3, 64, 64)
    path = latency_budget.export(module, 64, tmp_path / "m.onnx")
    assert module_macs(module, x) == count_cost(api.analyze(path, time_denormals=False).graph).macs


def test_the_ratio_search_finds_the_target_where_macs_rise_again_at_high_ratios() -> None:
    """Torch-Pruning leaves a group whole once a ratio would round it to zero, so MACs can jump back
    to 1.0: a bisection over the whole range would step into that plateau at its first midpoint."""

    class Plateau(UniformL1):
        def prune(self, ratio: float) -> nn.Module:
            self.fractions[ratio] = 1.0 - ratio if ratio <= 0.45 else 1.0
            return nn.Identity()

    search = Plateau(tiny_net(), torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8))
    _, ratio = search.at(0.6)
    assert ratio == pytest.approx(0.4) and search.fractions[ratio] == pytest.approx(0.6)
    _, ratio = search.at(0.58)  # inside a grid interval: bisection within 0.5% of the target
    assert abs(search.fractions[ratio] / 0.58 - 1) <= 0.005 and 0.4 < ratio < 0.45


@needs_tp
def test_torch_pruning_uniform_lands_near_the_macs_and_keeps_the_classifier(tmp_path: Path) -> None:
    module = cifar_resnet(8).eval()
    x = torch.randn(1, 3, 32, 32)
    uniform = UniformL1(module, x, x)
    # At round_to 16 ResNet-8 (16/32/64 channels) keeps 0.66 of its MACs from ratio 0.05 on, 0.59 near
    # 0.5, and more again at higher ratios (groups rounded to zero are left whole): 0.62 sits between
    # two steps of the staircase.
    pruned, ratio = uniform.at(0.62)
    kept = module_macs(pruned, x) / module_macs(module, x)
    assert 0 < ratio < 0.9
    assert uniform.fractions[ratio] == kept
    # The closest of every ratio tried, and the ratios tried bracket the target.
    assert abs(kept - 0.62) == min(abs(f - 0.62) for f in uniform.fractions.values())
    assert min(uniform.fractions.values()) <= 0.62 <= max(uniform.fractions.values())
    below, above = uniform.bracket(0.62)
    assert below <= 0.62 < above and kept in (below, above)
    assert pruned.fc.out_features == 10 and pruned(x).shape == (1, 10)
    assert any(
        a.out_channels < b.out_channels
        for a, b in zip(pruned.modules(), module.modules(), strict=True)
        if isinstance(a, nn.Conv2d)
    )

    # Its export maps onto the original's group ids, as the latency prediction needs.
    original = api.analyze(latency_budget.export(module, 32, tmp_path / "o.onnx"), time_denormals=False).graph
    compact = api.analyze(latency_budget.export(pruned, 32, tmp_path / "p.onnx"), time_denormals=False).graph
    counts = latency_budget.counts_in(original, compact)
    assert counts and all(
        count % 16 == 0 and count < original.group(gid).size for gid, count in counts.items()
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "baseline",
    ["torch-pruning", "own", "own, bn-scale on a BN-kept export", "own, similarity on calibration images"],
)
def test_the_benchmark_prints_every_row_with_a_trained_accuracy_proxy(
    baseline: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if baseline == "torch-pruning" and not latency_budget.HAVE_TP:
        pytest.skip("torch_pruning (the bench extra) not installed")
    monkeypatch.setenv("DEPLOYSPARSE_CACHE", str(tmp_path / "latency"))
    monkeypatch.setattr(latency_budget, "MODELS", {"ResNet-18": lambda: resnet(18, num_classes=10, width=32)})
    out = tmp_path / "rows.json"
    args = ["--models", "ResNet-18", "--size", "64", "--batch", "2", "--warmup", "0", "--iters", "1"]
    args += ["--rounds", "1", "--epochs", "1", "--train-subset", str(2 * BATCH), "--cache", str(tmp_path)]
    args += ["--json", str(out)] + (["--own-uniform"] if baseline.startswith("own") else [])
    criterion, seed = "l1", 0
    if "bn-scale" in baseline:
        criterion, seed = "bn-scale", 1
        args += ["--keep-bn", "--criterion", criterion, "--seed", str(seed)]
    latency_row = f"{criterion} 50% latency, threshold"
    if "calibration" in baseline:
        criterion = "similarity"
        args += [
            "--criterion",
            criterion,
            "--calib",
            "4",
            "--latency-targets",
            "0.6",
            "--allocations",
            "knapsack",
        ]
        latency_row = f"{criterion} 60% latency, knapsack"
    assert latency_budget.main(args) == 0
    printed = capsys.readouterr().out
    assert "ResNet-18: original validation accuracy" in printed
    assert f"(1 epochs, seed {seed})" in printed
    assert [p.name for p in tmp_path.glob("*.pt")] == [Training(1, 2 * BATCH, seed).tag("ResNet-18")]
    figures = json.loads(out.read_text())
    rows = figures["rows"]
    uniform = "TP uniform L1" if baseline == "torch-pruning" else "our uniform L1"
    assert [r["label"].split(" at ")[0].split(" (")[0] for r in rows] == [
        f"{criterion} 70% FLOPs",
        uniform,
        f"{criterion} 50% FLOPs",
        uniform,
        latency_row,
        uniform,
    ]
    assert printed.count("| ResNet-18 |") == 6
    assert all(0 < r["macs"] < 1 and 0 <= r["agreement"] <= 1 for r in rows)
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["bn_accuracy"] <= 1 for r in rows)
    assert all(r["predicted"] is not None for r in rows)  # Torch-Pruning's groups mapped too
    # The proxy ran on the pruned 32x32 models: pruning moved the outputs.
    assert all(r["rel_error"] > 0 for r in rows)
    assert 0 <= figures["accuracy"]["ResNet-18"] <= 1


@pytest.mark.slow
def test_criteria_allocation_compares_each_criterion_global_and_uniform_at_equal_macs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        criteria_allocation, "MODELS", {"ResNet-18": lambda: resnet(18, num_classes=10, width=32)}
    )
    out = tmp_path / "rows.json"
    args = ["--models", "ResNet-18", "--criteria", "l1,similarity", "--targets", "0.5", "--calib", "16"]
    args += ["--epochs", "1", "--train-subset", str(2 * BATCH), "--cache", str(tmp_path), "--json", str(out)]
    assert criteria_allocation.main(args) == 0
    rows = json.loads(out.read_text())
    variants = [r["variant"].split(" (")[0] for r in rows]
    expected = ["original", "l1, global, 50% FLOPs", "l1, uniform, at the MACs above"]
    expected += ["TP uniform L1"] if latency_budget.HAVE_TP else []
    expected += ["similarity, global, 50% FLOPs", "similarity, uniform, at the MACs above"]
    assert variants == expected
    assert capsys.readouterr().out.count("| ResNet-18 |") == len(expected)
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    for global_row, uniform_row in ((rows[1], rows[2]), (rows[-2], rows[-1])):
        assert abs(global_row["macs"] - 0.5) <= 0.03
        assert abs(uniform_row["macs"] - global_row["macs"]) <= 0.1  # steps of 16 channels in every group


def test_a_uniform_schedule_keeps_the_same_rounded_fraction_of_every_group_by_the_given_scores(
    tmp_path: Path,
) -> None:
    path = latency_budget.export(resnet(18, num_classes=10, width=32), 32, tmp_path / "r.onnx")
    ga = api.analyze(path, time_denormals=False).graph
    rng = np.random.default_rng(0)
    scores = {g.id: rng.random(g.size) for g in ga.groups if g.prunable}
    plan = latency_budget.uniform_plan(ga, 0.5, scores)
    assert plan.keep
    for gid, kept in plan.keep.items():
        size = ga.group(gid).size
        assert len(kept) == max(16, round(size / 2 / 16) * 16)
        # The highest-scoring channels, pinned ones first.
        pinned = set(ga.group(gid).pinned_channels)
        unpinned_kept = [c for c in kept if c not in pinned]
        dropped = sorted(set(range(size)) - set(kept))
        if unpinned_kept and dropped:
            assert min(scores[gid][unpinned_kept]) >= max(scores[gid][dropped])


def test_the_spinning_benchmark_prints_three_fractions_per_repeat(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import spinning
    from deploysparse.latency import LayerShape
    from deploysparse.modelio import save_model

    big = save_model(LayerShape("dense", 256, 256).model(256, 256), tmp_path / "big.onnx")
    small = save_model(LayerShape("dense", 256, 256).model(256, 64), tmp_path / "small.onnx")
    args = [str(big), str(small), "--batch", "1", "--runs", "3", "--repeats", "2", "--threads", "1"]
    assert spinning.main(args) == 0
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| 1 ") or line.startswith("| 2 ")
    ]
    assert len(rows) == 2
    for row in rows:
        cells = [float(c) for c in row.strip("| ").split(" | ")[1:]]
        assert len(cells) == 3 and all(c > 0 for c in cells)
