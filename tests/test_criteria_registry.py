"""register_criterion: a criterion defined here, outside the package, is accepted by `prune` (API and
CLI), a recipe run and a sweep without editing the package; a name is registered once unless
replaced; and `dead`, which ranks nothing, refuses a budget target with one text that lists the
registered criteria."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from deploysparse import api
from deploysparse.budget import Budget
from deploysparse.criteria import (
    CRITERIA,
    budget_for,
    criterion_names,
    get_criterion,
    register_criterion,
    takes_budget,
    unregister_criterion,
)
from deploysparse.criteria.base import CriterionContext
from deploysparse.errors import UsageError
from deploysparse.graph.groups import ChannelGroup
from deploysparse.graph.masking import zero_channels
from deploysparse.modelio import save_model
from deploysparse.pipeline import RunInputs, run_recipe
from deploysparse.recipe import load_recipe
from deploysparse.sweep.config import grid_settings, load_sweep, point_recipe
from tests.criteria_helpers import residual_model
from tests.exporting import relative_error, run

NAME = "index-order"


@dataclass(frozen=True)
class IndexOrder:
    """Scores a channel by its index, lowest first kept: every group loses its highest channels, a
    ranking none of the built-in criteria gives, so a plan shows which criterion made it."""

    name: str = NAME
    needs_data: bool = False

    def score(self, group: ChannelGroup, ctx: CriterionContext) -> np.ndarray:
        return -np.arange(group.size, dtype=np.float64)


@pytest.fixture
def registered() -> Iterator[IndexOrder]:
    criterion = register_criterion(NAME, IndexOrder())
    yield criterion
    unregister_criterion(NAME)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return save_model(residual_model(np.random.default_rng(0)), tmp_path / "model.onnx")


def assert_highest_channels_removed(plan_keep: dict[str, np.ndarray]) -> None:
    assert plan_keep, "the plan removed nothing"
    for kept in plan_keep.values():
        assert np.array_equal(np.sort(kept), np.arange(len(kept)))


def test_prune_through_the_api_equals_the_masked_original(registered) -> None:
    rng = np.random.default_rng(1)
    result = api.prune(residual_model(np.random.default_rng(0)), criterion=NAME, ratio=0.3, round_to=1)
    assert result.plan.criterion == NAME and result.summary["criterion"] == NAME
    assert_highest_channels_removed(result.plan.keep)
    masked = zero_channels(result.graph, result.plan)
    fresh = {"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)}
    for a, b in zip(run(masked, fresh), run(result.model, fresh), strict=True):
        assert relative_error(a, b) < 1e-5


def test_prune_through_the_cli(registered, model_file: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "compact.onnx"
    result = cli(
        "prune", model_file, "--criterion", NAME, "--ratio", "0.3", "--round-to", "1", "-o", out, "--json"
    )
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["criterion"] == NAME and summary["channels_removed"] > 0
    fresh = {"x": np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    assert all(np.all(np.isfinite(y)) for y in run(out, fresh))


def test_an_unregistered_name_is_refused_again(model_file: Path, tmp_path: Path, cli) -> None:
    register_criterion(NAME, IndexOrder())
    unregister_criterion(NAME)
    result = cli("prune", model_file, "--criterion", NAME, "--ratio", "0.3", "-o", tmp_path / "c.onnx")
    assert result.code == 2 and result.err.startswith("error: --criterion index-order: unknown")


def test_a_recipe_runs_it(registered, model_file: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.npy"
    np.save(data, np.random.default_rng(3).standard_normal((8, 3, 8, 8)).astype(np.float32))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"prune:\n  criterion: [dead, {NAME}]\n  ratio: 0.3\n  round_to: 1\n"
        "validate: {atol: null, rtol: null, min_cosine: null, min_top1_agreement: null}\n"
        "bench: {iters: 2, warmup: 1, repeats: 1}\n"
    )
    report = run_recipe(
        load_recipe(recipe), RunInputs(model=str(model_file), calib=str(data)), tmp_path / "out"
    )
    assert report["pruning"]["criterion"] == f"dead+{NAME}"
    assert report["pruning"]["channels_removed"] > 0
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["criterion"] == NAME
    assert_highest_channels_removed({g["id"]: np.array(g["keep"]) for g in plan["groups"]})


def test_a_sweep_accepts_it(registered, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        f"models: [model.onnx]\ndata: {{calib: calib.npy}}\naxes:\n  criterion: [{NAME}, dead]\n"
        "  flops_target: [0.5]\n"
    )
    sweep = load_sweep(path)
    points = grid_settings(sweep)
    assert [p["criterion"] for p in points] == [NAME, "dead"]
    assert points[0]["flops_target"] == 0.5 and "flops_target" not in points[1]  # dead takes none
    recipe = point_recipe(sweep.base_recipe, points[0])
    assert recipe.prune.criterion == ["dead", NAME] and recipe.prune.flops_target == 0.5


def test_names_are_read_from_the_registry_when_asked(registered) -> None:
    assert NAME in criterion_names() and get_criterion(NAME) is registered and takes_budget(NAME)
    assert not takes_budget("dead")


def test_a_name_is_registered_once_unless_replaced(registered) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_criterion(NAME, IndexOrder())
    with pytest.raises(ValueError, match="'l1' is already registered"):
        register_criterion("l1", IndexOrder(name="l1"))
    other = IndexOrder()
    assert register_criterion(NAME, other, replace=True) is other and CRITERIA[NAME] is other
    with pytest.raises(ValueError, match="calls itself"):
        register_criterion("other-name", IndexOrder())
    with pytest.raises(ValueError, match="dead filters"):
        register_criterion("dead", IndexOrder(name="dead"))
    with pytest.raises(TypeError, match="score"):
        register_criterion("no-score", object())  # type: ignore[arg-type]


def test_dead_takes_no_target_and_says_which_criteria_rank(registered) -> None:
    with pytest.raises(UsageError) as error:
        budget_for("dead", Budget(flops_target=0.5))
    text = str(error.value)
    assert text.startswith("criterion dead takes no budget (--flops-target 0.5)")
    for name in ("inactive", "pfp-random", NAME, *CRITERIA):
        assert name in text
    assert budget_for("dead", Budget(min_channels=4, round_to=8)) == Budget(round_to=8)
    assert budget_for(NAME, Budget(ratio=0.3)) == Budget(ratio=0.3)
    with pytest.raises(UsageError, match="--criterion l3: unknown"):
        budget_for("l3", Budget(ratio=0.3))


def test_the_example_in_docs_design_md_runs() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text(encoding="utf-8")
    section = text.split("### Worked example: adding a criterion", 1)[1]
    exec(section.split("```python\n", 1)[1].split("```", 1)[0], {})
    try:
        rng = np.random.default_rng(4)
        calib = {"x": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)}
        result = api.prune(
            residual_model(rng), criterion="mean-activation", calib=calib, ratio=0.3, round_to=1
        )
        assert result.plan.criterion == "mean-activation" and result.summary["channels_removed"] > 0
    finally:
        unregister_criterion("mean-activation")
