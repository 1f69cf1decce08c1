"""benchmarks/real_exports.py and benchmarks/recipe_phases.py run, on a tiny model made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks import real_exports, recipe_phases

pytestmark = pytest.mark.slow  # a dozen processes and runs


def _tiny(path: Path, height: int | str, width: int | str) -> Path:
    """Conv-Relu-Conv with a dynamic batch (and dynamic H/W when given as names)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("Conv", ["b", "w2"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, height, width])],
        [
            numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)]
    )  # int8 needs 13 (until issue 26)
    model.ir_version = 7
    onnx.save(model, path)
    return path


def test_real_exports_prints_a_row_per_model_with_each_outcome(tmp_path: Path, capsys) -> None:
    models = tmp_path / "models"
    models.mkdir()
    _tiny(models / "hw.onnx", "H", "W")
    _tiny(models / "same.onnx", "H", "W")  # the same bytes: run once (the first name in order)
    commands = "prune,bench,build int8,validate"  # one process each; the others are built alike
    argv = [
        "--models",
        str(models),
        "--shape",
        "hw=1x3x16x24",
        "--commands",
        commands,
        "--keep",
        str(tmp_path),
    ]
    assert real_exports.main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    row = next(line for line in table if line.startswith("| hw |"))
    assert "1x3x16x24 (--input-shape)" in row and "| 13 |" in row
    cells = dict(zip(real_exports.COMMANDS, [c.strip() for c in row.strip("|").split("|")][4:], strict=True))
    assert [c for c, cell in cells.items() if cell.startswith("ok ")] == commands.split(","), table
    assert all(cell == "-" for c, cell in cells.items() if c not in commands.split(",")), table
    assert not any(line.startswith("| same |") for line in table)


def test_recipe_phases_prints_each_phase_of_a_run(tmp_path: Path, capsys) -> None:
    model = _tiny(tmp_path / "static.onnx", 16, 16)
    assert recipe_phases.main(["--model", str(model), "--samples", "4"]) == 0
    out = capsys.readouterr().out
    for label, _, _ in recipe_phases.PHASES:
        line = next(line for line in out.splitlines() if line.startswith(f"| {label} |"))
        seconds = float(line.split("|")[2])
        assert seconds >= 0.0
    benchmark = next(line for line in out.splitlines() if line.startswith("| benchmark"))
    assert float(benchmark.split("|")[2]) > 0  # the phases are found in the profile
