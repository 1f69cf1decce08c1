"""Latency budgets: the measured table (cached on disk), and `prune --latency-target` end to end on
real ONNX Runtime runs (no timed assertions: what is checked is that the plan meets the *predicted*
target and the compact model is exact where it must be). The allocation against a known latency
function: tests/test_budget_latency.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deploysparse import api
from deploysparse.backends import get_backend
from deploysparse.budget.latency import CORRECTIONS
from deploysparse.latency import Layer, LayerShape, grid_widths
from deploysparse.modelio import save_model
from tests.exporting import random_feeds, run


def test_grid_widths_round_and_interpolate():
    assert grid_widths(64, 8) == [16, 32, 48, 64]
    assert grid_widths(6, 8) == [2, 3, 5, 6]  # smaller than round_to: not rounded
    layer = Layer(
        "n", LayerShape("dense", 64, 64), [16, 64], [16, 64], np.array([[1.0, 2.0], [3.0, 4.0]]), "x", "y"
    )
    assert layer.at(64, 64) == 4.0
    assert layer.at(40, 16) == pytest.approx(2.0)  # halfway between 1 and 3
    assert layer.at(16, 40) == pytest.approx(1.5)


def test_prune_latency_target_end_to_end_with_a_cached_table(exported, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DEPLOYSPARSE_CACHE", str(tmp_path / "cache"))
    path = exported("vgg_flatten")
    result = api.prune(str(path), criterion="l1", latency_target=0.6, batch=2, round_to=1)
    latency = result.summary["latency"]
    assert latency["allocation"] == "threshold"  # the default
    # a tiny net's layers take microseconds, so what its table can promise and what the compact
    # model measures depend on the machine's load: the prediction must not rise above the
    # original's, and the plan meet the target or say that it could not
    assert latency["predicted_ms"] <= latency["predicted_original_ms"]
    if latency["predicted_ms"] > 0.6 * latency["predicted_original_ms"] * 1.02:
        assert any("latency target not reached" in w for w in result.summary["warnings"])
    assert latency["measured_ms"] > 0 and latency["measured_original_ms"] > 0
    assert 0 <= latency["corrections"] <= CORRECTIONS
    assert result.summary["flops_after"] < result.summary["flops_before"]
    tables = list((tmp_path / "cache" / "latency").glob("onnxruntime-*.json"))
    assert len(tables) == 1 and json.loads(tables[0].read_text())
    # a second run reads the table back instead of measuring it again (the whole model, timed
    # again, only rescales it), and its compact model runs on fresh inputs
    before = tables[0].read_text()
    again = api.prune(str(path), criterion="l1", latency_target=0.6, batch=2, round_to=1)
    assert tables[0].read_text() == before
    outputs = run(again.model, random_feeds(path, np.random.default_rng(0)))
    assert np.all(np.isfinite(outputs[0]))


def test_cli_latency_target(exported, tmp_path: Path, cli, monkeypatch):
    monkeypatch.setenv("DEPLOYSPARSE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "compact.onnx"
    result = cli(
        "prune",
        exported("vgg_flatten"),
        "--criterion",
        "l2",
        "--latency-target",
        "0.7",
        "--batch",
        "2",
        "--latency-allocation",
        "knapsack",
        "-o",
        out,
        "--json",
    )
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["latency"]["backend"] == "onnxruntime" and summary["latency"]["batch"] == 2
    assert summary["latency"]["allocation"] == "knapsack"
    assert out.exists()
    bad = cli("prune", exported("vgg_flatten"), "--criterion", "dead", "--latency-target", "0.5", "-o", out)
    assert bad.code == 2 and bad.err.startswith("error: ")
    bad = cli(
        "prune", exported("vgg_flatten"), "--criterion", "l1", "--latency-allocation", "greedy", "-o", out
    )
    assert bad.code == 2 and bad.err.startswith("error: ") and "--latency-allocation" in bad.err


def test_alternating_timing_turns_thread_spinning_off(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """Two sessions timed run by run must not busy-wait: the idle one's spinning threads would steal
    the cores of the one being timed (docs/benchmarks.md, thread spinning)."""
    import onnxruntime as ort

    from deploysparse.backends.onnxruntime.runtime import session_options

    key = "session.intra_op.allow_spinning"
    assert session_options(ort, 2, spinning=False).get_session_config_entry(key) == "0"
    with pytest.raises(Exception, match=key):  # ONNX Runtime's default: spinning
        session_options(ort, 2).get_session_config_entry(key)
    opened = []
    timer = get_backend("onnxruntime").timer(batch=1)
    real_runner = timer.backend.runner

    def runner(path, threads=None, *, spinning=True):
        opened.append(spinning)
        return real_runner(path, threads, spinning=spinning)

    monkeypatch.setattr(timer.backend, "runner", runner)
    path = save_model(LayerShape("dense", 4, 4).model(4, 4), tmp_path / "layer.onnx")
    first, second = timer.interleaved_ms([path, path])
    assert first > 0 and second > 0 and opened == [False, False]
