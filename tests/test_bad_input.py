"""Bad input through the CLI: one line `error: ...` naming the culprit, exit code 2, no traceback,
the input file byte-for-byte unchanged and no output written. And an op the rules do not know is not
bad input: its channels are pinned and the rest is pruned exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.archs.onnxgraphs import dead_convnet
from tests.exporting import random_feeds, relative_error, run


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    """A valid model (inline weights) with 4 dead channels."""
    path = tmp_path / "model.onnx"
    onnx.save(dead_convnet(), str(path))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_usage_error(result, *culprits: str) -> None:
    """Exit code 2 and exactly one stderr line `error: ...` that names every culprit."""
    assert result.code == 2, f"exit code {result.code}; stderr: {result.err}"
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.err}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.err
    for culprit in culprits:
        assert culprit in lines[0], f"{culprit!r} not named in: {lines[0]}"


@pytest.mark.parametrize("verb", ["analyze", "prune"])
def test_not_onnx(cli, tmp_path: Path, verb: str) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("these are not the weights you are looking for\n")
    before = digest(path)
    args = [verb, path] + (["-o", tmp_path / "out.onnx"] if verb == "prune" else [])
    assert_usage_error(cli(*args), str(path))
    assert digest(path) == before
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("verb", ["analyze", "prune"])
def test_truncated_onnx(cli, model_path: Path, tmp_path: Path, verb: str) -> None:
    path = tmp_path / "truncated.onnx"
    data = model_path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = digest(path)
    args = [verb, path] + (["-o", tmp_path / "out.onnx"] if verb == "prune" else [])
    assert_usage_error(cli(*args), str(path))
    assert digest(path) == before
    assert not (tmp_path / "out.onnx").exists()


def test_missing_model(cli, tmp_path: Path) -> None:
    path = tmp_path / "nowhere.onnx"
    assert_usage_error(cli("prune", path, "-o", tmp_path / "out.onnx"), str(path))


def test_model_without_conv(cli, tmp_path: Path) -> None:
    """Nothing to prune is a mistake worth a clear message, not an empty compact model."""
    shift = numpy_helper.from_array(np.ones((1, 3, 1, 1), np.float32), "shift")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["r"]), helper.make_node("Add", ["r", "shift"], ["output"])],
        "no_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [shift],
    )
    path = tmp_path / "noconv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    before = digest(path)
    assert_usage_error(cli("prune", path, "--criterion", "dead", "-o", tmp_path / "out.onnx"), str(path))
    assert digest(path) == before
    assert not (tmp_path / "out.onnx").exists()


def test_calibration_of_wrong_shape(cli, model_path: Path, tmp_path: Path) -> None:
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((4, 5, 8, 8)).astype(np.float32))
    before = digest(model_path)
    result = cli("prune", model_path, "--criterion", "dead", "--calib", calib, "-o", tmp_path / "out.onnx")
    assert_usage_error(result, "input")
    assert "calib.npy" in result.err or "(4, 5, 8, 8)" in result.err or "[4, 5, 8, 8]" in result.err
    assert digest(model_path) == before
    assert not (tmp_path / "out.onnx").exists()


def test_calibration_that_is_not_an_array(cli, model_path: Path, tmp_path: Path) -> None:
    calib = tmp_path / "calib.npy"
    calib.write_text("0.1, 0.2, 0.3\n")
    result = cli("prune", model_path, "--criterion", "dead", "--calib", calib, "-o", tmp_path / "out.onnx")
    assert_usage_error(result, str(calib))
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("spelling", ["same", "relative"])
def test_output_path_is_input_path(
    cli, model_path: Path, spelling: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = digest(model_path)
    output: str | Path = model_path
    if spelling == "relative":
        monkeypatch.chdir(model_path.parent)
        output = f"./{model_path.name}"
    assert_usage_error(cli("prune", model_path, "--criterion", "dead", "-o", output), model_path.name)
    assert digest(model_path) == before


def test_plan_for_another_model(cli, model_path: Path, tmp_path: Path) -> None:
    """A plan written for a wider model keeps channel indices this model does not have: refused."""
    wider = tmp_path / "wider.onnx"
    onnx.save(dead_convnet(width=16), str(wider))
    plan = tmp_path / "plan.json"
    ok = cli("prune", wider, "--criterion", "dead", "-o", tmp_path / "a.onnx", "--plan-out", plan)
    assert ok.code == 0, ok.err
    before = digest(model_path)
    assert_usage_error(cli("prune", model_path, "--plan", plan, "-o", tmp_path / "b.onnx"))
    assert digest(model_path) == before
    assert not (tmp_path / "b.onnx").exists()


def test_plan_that_is_not_json(cli, model_path: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text("keep: everything\n")
    assert_usage_error(cli("prune", model_path, "--plan", plan, "-o", tmp_path / "out.onnx"), str(plan))
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("middle", ["lpnorm", "batch_transpose_pair"])
def test_unknown_op_pins_its_channels_and_the_rest_is_pruned(cli, tmp_path: Path, middle: str) -> None:
    path = tmp_path / "model.onnx"
    model = dead_convnet(middle)
    onnx.save(model, str(path))
    before = digest(path)
    middle_op = {"lpnorm": "LpNormalization", "batch_transpose_pair": "Transpose"}[middle]

    report = cli("analyze", path, "--json")
    assert report.code == 0, report.err
    analysis = json.loads(report.out)
    assert any(p["op"] == middle_op for p in analysis["pinned"]), analysis["pinned"]

    out = tmp_path / "compact.onnx"
    result = cli("prune", path, "--criterion", "dead", "-o", out, "--json", "--round-to", "1")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["channels_removed"] == 4, summary
    assert digest(path) == before

    compact = onnx.load(str(out))
    assert [n.op_type for n in compact.graph.node].count(middle_op) == [
        n.op_type for n in model.graph.node
    ].count(middle_op)
    feeds = random_feeds(model, np.random.default_rng(3), batch=3)
    for a, b in zip(run(model, feeds), run(compact, feeds), strict=True):
        assert relative_error(a, b) < 1e-5
