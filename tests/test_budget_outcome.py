"""A target that is not met is never silent: `budget_met`, what the pins hold, --strict's exit code 3,
and the default --max-layer-ratio 0.9 that keeps the global ranking from emptying a stage.

The models pin channels with Softmax over the channel axis ("normalises across channels"): a rule
that pins by design, so the tests stay valid as rules for other ops are added.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from deploysparse import api
from deploysparse.budget import Budget
from deploysparse.budget.latency import allocate_latency
from deploysparse.criteria import CRITERIA
from deploysparse.graph.groups import ChannelGroup, Member
from deploysparse.graph.masking import zero_channels
from deploysparse.report import load_report
from tests.criteria_helpers import Builder, w
from tests.exporting import relative_error, run
from tests.test_budget_latency import LinearLatency

SOFTMAX = ("Softmax", "normalises across channels")


def softmax_model(rng: np.random.Generator, *, pin_second: bool = True) -> onnx.ModelProto:
    """conv 3->16, relu, softmax over channels, conv 16->32, relu, [softmax], pool, linear 32->10:
    the first group (16) pinned, the second (32) too unless `pin_second` is off."""
    b = Builder(rng)
    h = b.op("Softmax", b.op("Relu", b.conv("x", w(rng, 16, 3, 3, 3))), axis=1)
    h = b.op("Relu", b.conv(h, w(rng, 32, 16, 3, 3)))
    if pin_second:
        h = b.op("Softmax", h, axis=1)
    return b.model(b.gemm(b.op("Flatten", b.op("GlobalAveragePool", h)), w(rng, 10, 32)))


def trunk_model(rng: np.random.Generator, trunk: int = 160, strong: int = 8) -> onnx.ModelProto:
    """RegNet's failure in small: a residual trunk of `trunk` channels whose filters are tiny except
    for `strong` of them, beside four blocks of uniform 256-channel layers. Normalised by its group
    mean, nearly every trunk channel scores about 0, so a global ranking wants the trunk emptied."""
    b = Builder(rng)
    scale = np.full((trunk, 1, 1, 1), 0.01)
    scale[:strong] = 1.0
    x = b.op("Relu", b.conv("x", w(rng, trunk, 3, 3, 3) * scale))
    for _ in range(4):
        h = b.op("Relu", b.conv(x, w(rng, 256, trunk, 1, 1), pad=0))
        x = b.op("Relu", b.op("Add", x, b.conv(h, w(rng, trunk, 256, 1, 1) * scale, pad=0)))
    return b.model(b.gemm(b.op("Flatten", b.op("GlobalAveragePool", x)), w(rng, 10, trunk)))


def fresh_input(seed: int, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 8, 8)).astype(np.float32)


def assert_same_as_masked(result: api.PruneResult, seed: int) -> None:
    """The compact model computes what the original computes with the removed channels zeroed."""
    masked = zero_channels(result.graph, result.plan)
    feeds = {"x": fresh_input(seed)}
    for a, b in zip(run(masked, feeds), run(result.model, feeds), strict=True):
        assert a.shape == b.shape and relative_error(a, b) < 1e-5


def share_of(summary: dict, op: str, reason: str) -> dict:
    return next(s for s in summary["pinned_by_op"] if (s["op"], s["reason"]) == (op, reason))


def test_every_group_pinned_ratio_is_not_met_and_says_which_pins_hold_the_model():
    model = softmax_model(np.random.default_rng(0))
    result = api.prune(model, criterion="l1", ratio=0.3, round_to=1)
    summary = result.summary
    assert summary["channels_removed"] == 0
    assert summary["budget_met"] is False
    assert summary["budget"] == {
        "target": "ratio",
        "asked": 0.3,
        "reached": 0.0,
        "tolerance": 1 / 48,
        "met": False,
    }
    softmax = share_of(summary, *SOFTMAX)
    # each Softmax pins the conv's channels it reads and the channels it writes (no filter produces
    # those: a pinning op starts new ones): 4 groups, 16 + 16 + 32 + 32 channels, and with them
    # every layer; of the parameters all but the linear layer's 10 biases (the model's output)
    assert (softmax["groups"], softmax["channels"]) == (4, 96)
    params = (16 * 3 * 9 + 16) + (32 * 16 * 9 + 32) + (10 * 32 + 10)
    assert softmax["macs_share"] == pytest.approx(1.0)
    assert softmax["params_share"] == pytest.approx((params - 10) / params)
    line = next(w for w in summary["warnings"] if w.startswith("budget not met"))
    assert "--ratio 0.3 not met: 0.0% of the channels removed" in line
    assert "Softmax (normalises across channels): 4 groups, 100.0% of MACs, 99.8% of params" in line
    feeds = {"x": fresh_input(1)}
    np.testing.assert_array_equal(run(model, feeds)[0], run(result.model, feeds)[0])


def test_ratio_counts_the_channels_ops_pin_and_cuts_the_rest_to_make_up():
    """16 pinned + 32 live channels: --ratio 0.25 removes 12 (a quarter of 48), all from the live
    group; --ratio 0.7 would need 34, but --max-layer-ratio 0.9 lets the live group give 28."""
    model = softmax_model(np.random.default_rng(2), pin_second=False)
    met = api.prune(model, criterion="l1", ratio=0.25, round_to=1)
    assert met.summary["channels_removed"] == 12 and met.summary["budget_met"] is True
    assert met.summary["budget"]["reached"] == pytest.approx(12 / 48)
    assert not any(w.startswith("budget not met") for w in met.summary["warnings"])
    assert_same_as_masked(met, seed=3)

    short = api.prune(model, criterion="l1", ratio=0.7, round_to=1)
    assert short.summary["channels_removed"] == 28 and short.summary["budget_met"] is False
    assert short.summary["budget"]["reached"] == pytest.approx(28 / 48)
    assert share_of(short.summary, *SOFTMAX)["groups"] == 2  # conv 1's channels and the softmax's
    assert_same_as_masked(short, seed=4)


@pytest.mark.parametrize("criterion", sorted(set(CRITERIA) - {"bn-scale"}))  # bn-scale: no BN here
def test_every_criterion_reports_the_miss(criterion: str):
    """PFP allocates on its own (and pfp-random samples); the outcome comes with every allocation."""
    calib = {"x": np.random.default_rng(14).standard_normal((8, 3, 8, 8)).astype(np.float32)}
    model = softmax_model(np.random.default_rng(15))
    result = api.prune(model, criterion=criterion, calib=calib, ratio=0.3, round_to=1)
    assert result.summary["budget_met"] is False and result.summary["budget"]["reached"] == 0.0


def test_flops_target_out_of_reach_is_not_met_instead_of_an_error():
    result = api.prune(softmax_model(np.random.default_rng(5)), criterion="l2", flops_target=0.5, round_to=1)
    assert result.summary["budget_met"] is False
    assert result.summary["budget"]["target"] == "flops_target"
    assert result.summary["budget"]["reached"] == pytest.approx(1.0)
    assert any("--flops-target 0.5 not met: 100.0% of the MACs kept" in w for w in result.summary["warnings"])


def test_latency_target_with_every_group_pinned_is_not_met():
    """A table-only latency model (no measurement): nothing can go, so the prediction stays at the
    original's."""
    producer = Member("producer", "g0.w", 0, np.arange(8), node="conv_g0", op="Conv", input_index=1)
    group = ChannelGroup("g0", 8, [producer], pinned_channels=np.arange(8))
    model = LinearLatency([group], {"g0": 1.0})
    alloc = allocate_latency([group], {}, Budget(latency_target=0.5, round_to=1), model)
    assert alloc.keep == {}
    assert alloc.outcome.target == "latency_target" and not alloc.outcome.met
    assert alloc.outcome.reached == pytest.approx(1.0)


@pytest.mark.slow
def test_latency_target_end_to_end_with_every_group_pinned(tmp_path: Path, monkeypatch):
    """Measured on ONNX Runtime: the compact model is the original, so whatever the machine's load it
    cannot measure 10x faster than itself."""
    monkeypatch.setenv("DEPLOYSPARSE_CACHE", str(tmp_path / "cache"))
    result = api.prune(
        softmax_model(np.random.default_rng(6)), criterion="l1", latency_target=0.1, round_to=1
    )
    assert result.summary["budget_met"] is False and result.summary["budget"]["target"] == "latency_target"
    assert any(w.startswith("budget not met: --latency-target 0.1") for w in result.summary["warnings"])


def test_dead_criterion_has_no_target_and_counts_as_met():
    result = api.prune(softmax_model(np.random.default_rng(7)), criterion="dead")
    assert result.summary["budget_met"] is True and result.summary["budget"] is None
    assert share_of(result.summary, *SOFTMAX)["groups"] == 4  # the pins are reported all the same


def test_max_layer_ratio_keeps_the_ranking_from_emptying_a_trunk():
    """The default cap (0.9) keeps 16 of the trunk's 160 channels where the ranking wanted 8, and says
    so; lifted (1.0), the same ranking cuts the trunk to 8 (5%)."""
    model = trunk_model(np.random.default_rng(8))
    capped = api.prune(model, criterion="l1", ratio=0.3, round_to=8)
    trunk = next(g for g in capped.summary["groups"] if g["channels"] == 160)
    assert trunk["kept"] == 16 == math.ceil(0.1 * 160)
    kept_fractions = [g["kept"] / g["channels"] for g in capped.summary["groups"] if g["prunable"]]
    assert min(kept_fractions) >= 0.1
    [held] = capped.summary["capped"]
    assert held == {"group": trunk["id"], "label": held["label"], "channels": 160, "wanted": 8, "kept": 16}
    line = next(w for w in capped.summary["warnings"] if w.startswith("--max-layer-ratio 0.9 kept 1 group"))
    assert f"{held['label']} (160): 8 -> 16" in line
    assert_same_as_masked(capped, seed=9)

    uncapped = api.prune(model, criterion="l1", ratio=0.3, round_to=8, max_layer_ratio=1.0)
    assert next(g for g in uncapped.summary["groups"] if g["id"] == trunk["id"])["kept"] == 8
    assert uncapped.summary["capped"] == []
    assert_same_as_masked(uncapped, seed=10)


def test_cli_strict_exits_3_after_writing_and_without_it_says_so_in_one_line(tmp_path: Path, cli):
    model = tmp_path / "pinned.onnx"
    onnx.save(softmax_model(np.random.default_rng(11)), model)
    out = tmp_path / "compact.onnx"
    plain = cli("prune", model, "--criterion", "l1", "--ratio", "0.3", "-o", out)
    assert plain.code == 0, plain.err
    [line] = [row for row in plain.out.splitlines() if "budget not met" in row]
    assert line.startswith("warning: budget not met: --ratio 0.3 not met") and "Softmax" in line
    assert out.is_file()

    out.unlink()
    strict = cli("prune", model, "--criterion", "l1", "--ratio", "0.3", "-o", out, "--strict", "--json")
    assert strict.code == 3
    assert out.is_file()  # written before the exit code says the budget was missed
    assert "error: --strict: --ratio 0.3 not met" in strict.err
    summary = json.loads(strict.out)
    assert summary["budget_met"] is False and summary["pinned_by_op"][0]["op"] == "Softmax"

    met = cli("prune", model, "--criterion", "dead", "-o", out, "--strict")
    assert met.code == 0, met.err


@pytest.mark.slow
def test_run_reports_an_unmet_budget_and_strict_exits_3(tmp_path: Path, cli):
    model, data = tmp_path / "pinned.onnx", tmp_path / "data.npy"
    onnx.save(softmax_model(np.random.default_rng(12)), model)
    np.save(data, fresh_input(13, batch=8))
    recipe = tmp_path / "strict.yaml"
    recipe.write_text(
        "name: strict\n"
        "prune: {criterion: [dead, l1], ratio: 0.3, round_to: 1, strict: true}\n"
        "bench: {batches: [1], warmup: 1, iters: 3, repeats: 1, per_layer: false}\n"
    )
    result = cli("run", recipe, "--model", model, "--calib", data, "-o", tmp_path / "out")
    assert result.code == 3, result.err
    assert "error: strict: --ratio 0.3 not met" in result.err
    report = load_report(tmp_path / "out" / "report.json")
    assert report.validation.passed  # nothing was removed: the miss is the budget's alone
    assert report.pruning.budget_met is False and report.pruning.budget.target == "ratio"
    assert report.pruning.pinned_by_op[0].op == "Softmax"
    page = (tmp_path / "out" / "report.html").read_text()
    assert "NOT MET" in page and "What the pins hold" in page
