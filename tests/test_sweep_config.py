"""sweep.yaml: the shipped examples load, the grid multiplies out as documented, and a broken file
fails with one line naming the file, line and key (exit 2 from the CLI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deploysparse.recipe import Recipe
from deploysparse.sweep.config import SweepError, grid_settings, load_sweep, point_recipe

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """\
models: [model.onnx]
data: {calib: calib.npy}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["sweep-digits.yaml", "sweep-digits-finetune.yaml"])
def test_shipped_examples_load(name: str) -> None:
    sweep = load_sweep(REPO / "examples" / name)
    assert sweep.source == REPO / "examples" / name
    assert isinstance(sweep.base_recipe, Recipe)
    assert len(grid_settings(sweep)) == 4  # 2 criteria x 2 budgets


def test_digits_example_is_two_criteria_by_two_budgets_on_onnxruntime() -> None:
    sweep = load_sweep(REPO / "examples" / "sweep-digits.yaml")
    points = grid_settings(sweep)
    assert {(p["criterion"], p["flops_target"]) for p in points} == {
        (c, f) for c in ("l1", "bn-scale") for f in (0.5, 0.3)
    }
    assert {p["backend"] for p in points} == {"onnxruntime"}


def test_grid_multiplies_every_axis_and_budgets_form_one_axis(tmp_path: Path) -> None:
    sweep = load_sweep(
        write(
            tmp_path,
            MINIMAL + "axes:\n  criterion: [l1, dead]\n  flops_target: [0.5]\n  ratio: [0.2, 0.4]\n"
            "  precision: [fp32, int8]\n  batch: [1, 8]\n",
        )
    )
    points = grid_settings(sweep)
    # l1: 3 budgets x 2 precisions x 2 batches; dead takes no budget: 2 x 2
    assert len(points) == 12 + 4
    assert {"criterion": "dead", "precision": "int8", "backend": "onnxruntime", "batch": 8} in points
    recipe = point_recipe(sweep.base_recipe, {"criterion": "l1", "ratio": 0.4, "precision": "int8",
                                              "backend": "onnxruntime", "batch": 8})  # fmt: skip
    assert recipe.prune.criterion == ["dead", "l1"] and recipe.prune.ratio == 0.4
    assert recipe.prune.flops_target is None
    assert recipe.build.precision == "int8" and recipe.bench.batches == [8] and recipe.build.batch[1] == 8


def test_latency_target_is_a_budget_on_the_points_backend_and_batch(tmp_path: Path) -> None:
    sweep = load_sweep(
        write(tmp_path, MINIMAL + "axes:\n  criterion: [l1]\n  latency_target: [0.5, 0.7]\n  batch: [8]\n")
    )
    points = grid_settings(sweep)
    assert [p.get("latency_target") for p in points] == [0.5, 0.7]
    recipe = point_recipe(sweep.base_recipe, points[0])
    assert recipe.prune.latency_target == 0.5 and recipe.prune.flops_target is None
    assert recipe.build.batch[1] == 8 and recipe.build.backend == "onnxruntime"  # where it is measured


def test_missing_axes_take_the_base_recipe(tmp_path: Path) -> None:
    sweep = load_sweep(write(tmp_path, MINIMAL + "recipe: {prune: {criterion: [dead, l2], ratio: 0.3}}\n"))
    assert grid_settings(sweep) == [
        {"criterion": "l2", "ratio": 0.3, "precision": "fp32", "backend": "onnxruntime", "batch": 1}
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MINIMAL + "axes:\n  critrion: [l1]\n",
            r"s\.yaml:4: unknown key 'axes\.critrion' \(allowed: criterion,",
        ),
        (MINIMAL + "axes:\n  criterion: [l3]\n", r"s\.yaml:4: axes\.criterion\.0: Input should be"),
        (MINIMAL + "axes:\n  flops_target: [1.5]\n", r"s\.yaml:4: axes\.flops_target"),
        (MINIMAL + "axes:\n  flops_target: {min: 0.2, max: 0.5}\n", r"a range needs a search algorithm"),
        ("data: {calib: c.npy}\n", r"s\.yaml:1: missing key 'models'"),
        (MINIMAL + "models: [b.onnx]\n", r"s\.yaml:3: key 'models' given twice"),
        (MINIMAL + "finetune: train\n", r"finetune\.function: .*expected 'package\.module:function'"),
        (
            MINIMAL + "recipe:\n  prune:\n    ratoi: 0.3\n",
            r"s\.yaml:5: unknown key 'recipe\.prune\.ratoi' \(allowed: criterion,",
        ),
        (MINIMAL + "recipe: no-such-recipe\n", r"recipe: recipe file not found: no-such-recipe"),
        (MINIMAL + "select: {goal: fastest}\n", r"s\.yaml:3: select\.goal: Input should be"),
        ("- a\n- b\n", r"s\.yaml:1: a sweep is a mapping"),
    ],
)
def test_broken_sweep_file_names_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SweepError, match=message):
        load_sweep(write(tmp_path, text))


def test_cli_reports_a_bad_sweep_file_in_one_line_with_exit_2(tmp_path: Path, cli) -> None:
    path = write(tmp_path, MINIMAL + "axes:\n  critrion: [l1]\n")
    result = cli("sweep", path, "-o", tmp_path / "out")
    assert result.code == 2
    assert result.err.startswith("error: ") and result.err.count("\n") == 1
    assert "unknown key 'axes.critrion'" in result.err
    assert not (tmp_path / "out").exists()


def test_cli_names_a_missing_data_file(tmp_path: Path, cli, exported) -> None:
    model = exported("resnet_basic")
    path = write(tmp_path, f"models: [{model}]\ndata: {{calib: missing.npy}}\n")
    result = cli("sweep", path, "-o", tmp_path / "out")
    assert result.code == 2
    assert "data.calib" in result.err and "missing.npy: no such file" in result.err


def test_output_folder_holding_an_input_is_refused(tmp_path: Path, cli, exported) -> None:
    """The sweep writes into OUTDIR: a model, data file or the sweep file inside it is refused up front."""
    out = tmp_path / "out"
    out.mkdir()
    model = exported("resnet_basic")
    np.save(out / "calib.npy", np.ones((4, 3, 16, 16), np.float32))
    before = (out / "calib.npy").read_bytes()
    path = write(tmp_path, f"models: [{model}]\ndata: {{calib: out/calib.npy}}\n")
    result = cli("sweep", path, "-o", out)
    assert result.code == 2 and "holds data.calib" in result.err, result.err
    assert (
        sorted(p.name for p in out.iterdir()) == ["calib.npy"] and (out / "calib.npy").read_bytes() == before
    )


def test_search_algorithm_without_ray_is_refused(tmp_path: Path, cli) -> None:
    path = write(tmp_path, MINIMAL + "search: random\naxes: {flops_target: {min: 0.2, max: 0.6}}\n")
    result = cli("sweep", path, "-o", tmp_path / "out")
    assert result.code == 2 and "search: random runs on Ray Tune; add --ray auto" in result.err


def test_resume_without_a_previous_sweep_is_refused(tmp_path: Path, cli) -> None:
    path = write(tmp_path, MINIMAL)
    result = cli("sweep", path, "-o", tmp_path / "out", "--resume")
    assert result.code == 2 and "holds no sweep to resume" in result.err


def test_ray_without_ray_installed_says_how_to_install_it(tmp_path: Path, cli, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.delitem(sys.modules, "deploysparse.sweep.ray_runner", raising=False)
    result = cli("sweep", write(tmp_path, MINIMAL), "-o", tmp_path / "out", "--ray", "auto")
    assert result.code == 2
    assert "--ray needs Ray Tune: pip install 'deploysparse[scale]'" in result.err
    assert not (tmp_path / "out").exists()
