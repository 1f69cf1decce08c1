"""benchmarks/gate.py at a smoke-test size: the A/B models, the busy core, and a whole run of the
benchmark with --checks 5 on a short recipe (its counts depend on the machine: only their shape is
checked here; the figures come from a quiet machine, docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from benchmarks import gate
from deploysparse.backends import get_backend
from deploysparse.backends.feeds import make_feeds
from deploysparse.frontend.torch_export import export_onnx
from deploysparse.zoo.digits import INPUT_SHAPE, digits_model

pytestmark = pytest.mark.slow  # a torch export, and six `deploysparse run` processes

QUICK_RECIPE = """\
name: quick
prune:
  criterion: [dead]
build:
  backend: onnxruntime
  precision: fp32
bench:
  batches: [1]
  warmup: 2
  iters: 10
  repeats: 3
  per_layer: false
"""


def test_the_extra_layer_reads_the_stage_and_feeds_its_readers(tmp_path: Path) -> None:
    """B = A + a grouped 3x3 conv after stage 2: one Conv and one ReLU more, every former reader of
    the stage's output reads the new layer, and B runs (its outputs differ from A's: a new layer)."""
    a = export_onnx(digits_model().eval(), torch.randn(*INPUT_SHAPE), tmp_path / "a.onnx")
    model = onnx.load(str(a))
    b = gate.Extra(2, 3, 2).insert(model)
    ops = [n.op_type for n in b.graph.node]
    assert ops.count("Conv") == [n.op_type for n in model.graph.node].count("Conv") + 1
    conv = next(n for n in b.graph.node if n.name == "gate_extra/Conv")
    assert {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}["group"] == 2
    source = conv.input[0]
    assert [n.name for n in b.graph.node if source in n.input] == ["gate_extra/Conv"]
    assert gate._channels(model, source) == 128
    onnx.save(b, str(tmp_path / "b.onnx"))
    backend = get_backend("onnxruntime")
    with backend.runner(a) as run_a, backend.runner(tmp_path / "b.onnx") as run_b:
        feeds = make_feeds(run_a.input_specs, batch=2, seed=np.random.default_rng(0))
        out_a, out_b = run_a.run(feeds)["output"], run_b.run(feeds)["output"]
    assert out_a.shape == out_b.shape == (2, 10) and not np.allclose(out_a, out_b)


def test_the_busy_core_spins_until_the_block_ends() -> None:
    with gate.busy(0):
        time.sleep(0.2)
        children = multiprocessing.active_children()
        assert any(child.is_alive() for child in children)
    assert not multiprocessing.active_children()


def test_a_smoke_run_counts_every_check(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "quick.yaml"
    recipe.write_text(QUICK_RECIPE)
    args = ["--checks", "5", "--recipe", str(recipe), "--extra-layer", "2:3:2", "--no-busy"]
    assert gate.main([*args, "--out", str(tmp_path / "out"), "--json", str(tmp_path / "gate.json")]) == 0
    summary = json.loads((tmp_path / "gate.json").read_text())
    assert summary["runs"] == {"A": 3, "B": 3}  # 3 x 2 ordered pairs of A runs >= 5 checks
    assert [(r["comparison"], r["mode"]) for r in summary["rows"]] == [
        ("A/A", "auto"),
        ("A/A", "yardstick"),
        ("A/A", "absolute"),
        ("A/B", "auto"),
        ("A/B", "absolute"),
        ("A/B", "relative"),
    ]
    for row in summary["rows"]:
        assert row["checks"] == 5 == row["regressed"] + row["inconclusive"] + row["pass"]
    assert set(summary["cost_interleaved"]) == set(summary["cost_in_runs"]) == {"1"}
    assert "checks are not independent" in summary["counting"]
    out = capsys.readouterr().out
    assert "| A/A | auto | 5 |" in out and "B = A + extra layer 2:3:2" in out
    # the kept reports counted again, each baseline two A runs pooled (no new runs)
    again = ["--reports", str(tmp_path / "out"), "--pool", "2", "--checks", "3"]
    assert gate.main([*again, "--json", str(tmp_path / "pooled.json")]) == 0
    pooled = json.loads((tmp_path / "pooled.json").read_text())
    assert pooled["pool"] == 2 and pooled["runs"] == {"A": 3, "B": 3}
    assert all(row["checks"] == 3 for row in pooled["rows"])
    assert "2 A runs pooled as the baseline" in pooled["counting"]


def test_pooled_draws_never_reuse_the_report_run_in_its_own_baseline() -> None:
    draws = gate.pooled(n_a=6, n_now=6, checks=20, pool=3, same=True)
    assert len(draws) == len(set(draws)) == 20
    for base, now in draws:
        assert len(set(base)) == 3 and now not in base and max(*base, now) < 6
    with pytest.raises(SystemExit):
        gate.pooled(n_a=3, n_now=3, checks=1, pool=3, same=True)  # no A run left to check
    with pytest.raises(SystemExit):
        gate.pooled(n_a=3, n_now=3, checks=4, pool=2, same=True)  # 3 draws exist, not 4


def test_two_extra_layers_in_different_stages_both_feed_their_readers(tmp_path: Path) -> None:
    """`1:3:4+2:1:1`: the later stage's layer goes in first (the stage ReLUs are found by their index),
    each under its own names, and B runs with both."""
    a = export_onnx(digits_model().eval(), torch.randn(*INPUT_SHAPE), tmp_path / "a.onnx")
    model = onnx.load(str(a))
    extras = gate.Extras.parse("1:3:4+2:1:1")
    assert str(extras) == "1:3:4+2:1:1"
    b = extras.insert(model)
    convs = {n.name: n for n in b.graph.node if n.name in ("gate_extra/Conv", "gate_extra1/Conv")}
    assert len(convs) == 2
    assert gate._channels(model, convs["gate_extra/Conv"].input[0]) == 128  # stage 2, inserted first
    assert gate._channels(model, convs["gate_extra1/Conv"].input[0]) == 64  # stage 1
    for conv in convs.values():
        assert [n.name for n in b.graph.node if conv.input[0] in n.input] == [conv.name]
    onnx.save(b, str(tmp_path / "b.onnx"))
    with get_backend("onnxruntime").runner(tmp_path / "b.onnx") as run_b:
        feeds = make_feeds(run_b.input_specs, batch=2, seed=np.random.default_rng(0))
        assert run_b.run(feeds)["output"].shape == (2, 10)
    with pytest.raises(argparse.ArgumentTypeError, match="at most one extra layer per stage"):
        gate.Extras.parse("1:3:4+1:1:1")
