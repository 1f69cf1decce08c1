"""EBCLE: entropy on known distributions, the depth bound, residual block detection, exact block drop."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from deploysparse.cli import cli
from deploysparse.depth_advisor import (
    depth_bound,
    drop_blocks,
    entropy_bits,
    find_residual_blocks,
    measure_blocks,
    quantise_8bit,
)
from deploysparse.errors import UsageError
from tests.criteria_helpers import residual_model, run


def test_uniform_8bit_data_has_8_bits():
    data = np.random.default_rng(0).integers(0, 256, size=(400, 1, 50, 50), dtype=np.uint8)
    assert depth_bound(data).entropy_bits == pytest.approx(8.0, abs=2e-3)


def test_entropy_of_known_distributions():
    assert entropy_bits(np.zeros(1000, dtype=np.int64)) == 0.0
    assert entropy_bits(np.array([0, 255] * 500)) == pytest.approx(1.0)
    assert entropy_bits(np.arange(16).repeat(10)) == pytest.approx(4.0)
    assert quantise_8bit(np.array([0.0, 0.5, 1.0])).tolist() == [0, 128, 255]
    assert quantise_8bit(np.array([-1.0, 1.0])).tolist() == [0, 255]


def test_independent_pixels_bound_depth_to_one_layer():
    noise = np.random.default_rng(1).integers(0, 256, size=(200, 3, 16, 16), dtype=np.uint8)
    bound = depth_bound(noise)
    assert bound.dependency_range == 1 and bound.depth_bound == 1


def test_spatially_correlated_data_allows_more_depth():
    coarse = np.random.default_rng(2).integers(0, 256, size=(200, 1, 4, 4), dtype=np.uint8)
    blocky = coarse.repeat(8, axis=2).repeat(8, axis=3)  # 8x8 constant tiles: dependencies up to 7 px
    bound = depth_bound(blocky)
    assert 4 <= bound.depth_bound <= 8
    assert bound.mutual_information[0] > bound.mutual_information[-1]


def test_residual_blocks_found_with_their_depth():
    model = residual_model(np.random.default_rng(3))
    blocks = find_residual_blocks(model)
    assert [b.conv_depth for b in blocks] == [3, 5]
    assert (blocks[0].shortcut, blocks[0].add, blocks[1].shortcut) == ("relu3", "add9", "relu10")


def test_dropping_a_zero_branch_block_is_exact():
    rng = np.random.default_rng(4)
    model = residual_model(rng, zero_branch=True)
    blocks = find_residual_blocks(model)
    dropped = drop_blocks(model, [blocks[1].add])
    onnx.checker.check_model(dropped)
    assert len(dropped.graph.node) == len(model.graph.node) - 6  # conv, bn, relu, conv, bn and the Add
    assert len(dropped.graph.initializer) == len(model.graph.initializer) - 12  # 2 convs x 2, 2 BNs x 4
    x = rng.normal(size=(4, 3, 8, 8)).astype(np.float32)
    assert np.allclose(run(dropped, x), run(model, x), atol=1e-6)
    measure_blocks(model, {"x": x}, blocks)
    assert blocks[1].residual_ratio == 0.0 and blocks[1].output_change < 1e-6
    assert blocks[0].residual_ratio > 0.1 and blocks[0].output_change > 1e-3
    with pytest.raises(UsageError):
        drop_blocks(model, ["conv1"])


def test_cli_reports_and_drops_the_candidate(tmp_path):
    rng = np.random.default_rng(5)
    model = residual_model(rng, zero_branch=True)
    onnx.save_model(model, tmp_path / "m.onnx")
    np.save(tmp_path / "images.npy", rng.random((16, 3, 8, 8)).astype(np.float32))
    result = CliRunner().invoke(
        cli,
        [
            "advise-depth",
            "--data",
            str(tmp_path / "images.npy"),
            "--model",
            str(tmp_path / "m.onnx"),
            "--json",
            "--drop-blocks",
            str(tmp_path / "dropped.onnx"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["depth_bound"] == 1 and len(report["blocks"]) == 2
    assert report["candidates"] == [find_residual_blocks(model)[1].add]
    x = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    assert np.allclose(run(onnx.load(tmp_path / "dropped.onnx"), x), run(model, x), atol=1e-6)
