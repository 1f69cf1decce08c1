"""Recipes: every shipped one loads, and a broken one fails with the file, line and key at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploysparse.errors import DeploysparseError
from deploysparse.recipe import RecipeError, load_recipe, packaged_recipes, resolve_recipe

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_recipe_loads_and_explains_itself(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert recipe.source == path
    assert path.read_text().startswith("# "), "each recipe opens with a comment block saying why"
    report = recipe.to_report()
    assert report["settings"]["build"]["backend"] in ("onnxruntime", "tensorrt")
    assert set(report["settings"]) == {"input_shape", "prune", "build", "validate", "bench", "check"}


def test_shipped_recipes_are_the_packaged_ones() -> None:
    assert sorted(p.stem for p in SHIPPED) == packaged_recipes()
    for path in SHIPPED:
        packaged = REPO / "deploysparse" / "recipes" / path.name
        assert packaged.read_bytes() == path.read_bytes(), f"{packaged} is out of date: copy {path}"


def test_device_recipes_carry_the_device_settings() -> None:
    fp16 = load_recipe("jetson-orin-fp16")
    assert (fp16.build.backend, fp16.build.precision, fp16.prune.round_to) == ("tensorrt", "fp16", 8)
    assert fp16.bench.batches == [1]
    int8 = load_recipe("jetson-orin-int8")
    assert (int8.build.precision, int8.prune.round_to) == ("int8", 32)
    datacenter = load_recipe("datacenter-gpu-int8")
    assert datacenter.build.batch == [1, 8, 32] and max(datacenter.bench.batches) == 32
    x86 = load_recipe("x86-cpu-onnxruntime")
    assert (x86.build.backend, x86.build.precision) == ("onnxruntime", "fp32")


def test_bare_name_resolves_to_packaged_recipe_and_a_local_file_wins(tmp_path: Path, monkeypatch) -> None:
    assert resolve_recipe("x86-cpu-onnxruntime").name == "x86-cpu-onnxruntime.yaml"
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "bench:\n  batches: [4]\n", "x86-cpu-onnxruntime")
    assert load_recipe("x86-cpu-onnxruntime").bench.batches == [4]


def test_unknown_key_names_key_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nprune:\n  criterion: [dead, l1]\n  ratio: 0.3\n  max_layer_ratoi: 0.5\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}:5: unknown key 'prune.max_layer_ratoi'")
    assert "max_layer_ratio" in message  # the allowed keys are listed
    assert isinstance(info.value, DeploysparseError)


def test_unknown_section_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "build:\n  backend: onnxruntime\nbenchmark:\n  iters: 5\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:3: unknown key 'benchmark'"):
        load_recipe(path)


def test_wrong_type_names_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bench:\n  batches: [1, 8]\n  iters: lots\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:3: bench\.iters: .*integer"):
        load_recipe(path)


def test_bad_list_item_points_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "prune:\n  criterion:\n    - dead\n    - l3\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:4: prune\.criterion\.1: .*'l1'"):
        load_recipe(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("prune:\n  ratio: 0.3\n  flops_target: 0.5\n", "either ratio or flops_target"),
        ("prune:\n  ratio: 1.5\n", "prune.ratio"),
        (
            "build:\n  backend: tensorrt\n  batch: [1, 1, 1]\nbench:\n  batches: [1, 8]\n",
            "outside build.batch",
        ),
        ("build:\n  batch: [8, 1, 32]\n", "min <= opt <= max"),
        ("build:\n  shapes:\n    input: [[1, 3, 8, 8], [1, 3, 8, 8]]\n", "three shapes"),
        ("build:\n  shapes:\n    input: [[1, 3, 8, 8], [4, 3, 8, 8], [2, 3, 8, 8]]\n", "min <= opt <= max"),
        ("build:\n  backend: onnxruntime\n  workspace_mb: 512\n", "workspace_mb only applies"),
        ("build:\n  backend: onnxruntime\n  sparsity: '2:4'\n", "sparsity only applies to backend tensorrt"),
        ("build:\n  backend: tensorrt\n  sparsity: '1:2'\n", "build.sparsity"),
        ("build:\n  precision: bf16\n", "build.precision"),
        (
            "prune:\n  criterion: l1\n  latency_target: 0.5\n  latency_allocation: greedy\n",
            "--latency-allocation greedy",
        ),
    ],
)
def test_inconsistent_settings_are_rejected(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(RecipeError, match=expected):
        load_recipe(write(tmp_path, text))


def test_a_tensorrt_recipe_may_ask_for_2_4_sparsity(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "build:\n  backend: tensorrt\n  sparsity: '2:4'\n"))
    assert recipe.build.sparsity == "2:4" and recipe.to_report()["settings"]["build"]["sparsity"] == "2:4"
    assert load_recipe("jetson-orin-int8").build.sparsity is None


def test_a_latency_target_may_name_its_allocation(tmp_path: Path) -> None:
    text = "prune:\n  criterion: l1\n  latency_target: 0.5\n  latency_allocation: knapsack\n"
    budget = load_recipe(write(tmp_path, text)).prune.budget()
    assert (budget.latency_target, budget.latency_allocation) == (0.5, "knapsack")
    assert (
        load_recipe(write(tmp_path, "prune:\n  criterion: l1\n")).prune.budget().latency_allocation
        == "threshold"
    )


def test_a_criterion_may_be_a_single_string(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "prune:\n  criterion: l2\n  ratio: 0.25\n  round_to: 8\n"))
    assert recipe.prune.criterion == ["l2"]
    assert (recipe.prune.ratio, recipe.prune.round_to) == (0.25, 8)
    assert recipe.name == "r"


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "prune:\n  ratio: 0.2\n  ratio: 0.4\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:3: key 'ratio' given twice"):
        load_recipe(path)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"recipe file not found: .*nope\.yaml.*x86-cpu-onnxruntime"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match=r"r\.yaml:2: not valid YAML"):
        load_recipe(write(tmp_path, "prune: [\n"))
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        load_recipe(write(tmp_path, "- prune\n- build\n"))


def test_calibration_path_is_relative_to_the_recipe(tmp_path: Path) -> None:
    path = write(tmp_path, "build:\n  backend: tensorrt\n  precision: int8\n  calibration: data/calib.npz\n")
    assert load_recipe(path).calibration_path() == tmp_path / "data" / "calib.npz"
    assert load_recipe("x86-cpu-onnxruntime").calibration_path() is None


def test_the_example_in_docs_recipes_md_loads(tmp_path: Path) -> None:
    text = (REPO / "docs" / "recipes.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    recipe = load_recipe(write(tmp_path, example, "my-model-orin.yaml"))
    assert recipe.prune.criterion == ["dead", "l1"] and recipe.prune.flops_target == 0.7
    assert recipe.validate_.atol is None and recipe.validate_.min_cosine == 0.98


def test_criterion_names_and_budget_defaults_are_the_clis(tmp_path: Path) -> None:
    from deploysparse.budget import Budget
    from deploysparse.criteria import CRITERIA

    for name in CRITERIA:  # every registered criterion, inactive and pfp-random included
        recipe = load_recipe(write(tmp_path, f"prune:\n  criterion: [dead, {name}]\n  ratio: 0.2\n"))
        assert recipe.prune.criterion == ["dead", name]
    prune = load_recipe(write(tmp_path, "prune:\n  criterion: dead\n")).prune
    assert prune.budget() == Budget()
    with pytest.raises(RecipeError, match=r"prune\.min_channels"):
        load_recipe(write(tmp_path, "prune:\n  min_channels: 0\n"))
