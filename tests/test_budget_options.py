"""Budget's fields are the one declaration of the budget options: every field is a CLI option and a
recipe key (a latency target's backend and batch: the build's), every target a sweep axis and a
results.csv column, and a value given in each of those places arrives in the Budget unchanged. A
field added to Budget appears in the CLI and the recipe with no other edit."""

from __future__ import annotations

import dataclasses
from typing import Any

import click
import pytest
from click.testing import CliRunner

from deploysparse.budget import TARGETS, Budget, Option, option_fields, value_type
from deploysparse.budget import options as options_module
from deploysparse.budget.options import FRACTION_TO_KEEP, budget_field
from deploysparse.cli import options as cli_options
from deploysparse.cli.prune import command as prune_command
from deploysparse.errors import UsageError
from deploysparse.recipe import PruneSettings, Recipe, _budget_keys
from deploysparse.sweep.config import Axes, point_recipe
from deploysparse.sweep.store import CSV_COLUMNS


def _cli_params(command: click.Command) -> dict[str, click.Parameter]:
    return {p.name: p for p in command.params if p.name}


def sample(f: dataclasses.Field, option: Option) -> Any:
    """A valid value of the field that is not its default, from what the field declares (and, for a
    backend, the CLI's choices)."""
    kind = value_type(f.name)
    if option.choices:
        return next(c for c in option.choices if c != f.default)
    if kind is tuple:
        return ("g0", "conv1")
    if kind is str:
        choices = _cli_params(prune_command)[f.name].type.choices
        return next(c for c in choices if c != f.default)
    interval = option.interval
    if kind is int:
        return interval.low + 1 if interval and interval.low is not None else 2
    low = interval.low if interval and interval.low is not None else 0.0
    high = interval.high if interval and interval.high is not None else low + 2.0
    return low + (high - low) * 0.375  # inside, and on no bound


FIELDS = list(option_fields())


def test_the_three_targets_are_declared_by_budget() -> None:
    assert TARGETS == ("ratio", "flops_target", "latency_target")
    with pytest.raises(UsageError, match=r"--ratio, --flops-target, --latency-target"):
        Budget(ratio=0.2, latency_target=0.5)


@pytest.mark.parametrize(("f", "option"), FIELDS, ids=[f.name for f, _ in FIELDS])
def test_every_field_is_a_cli_option_that_reaches_the_budget(f: dataclasses.Field, option: Option) -> None:
    assert f.name in _cli_params(prune_command)
    got: dict[str, Budget] = {}

    @click.command()
    @cli_options.budget_options
    def probe(**kwargs: Any) -> None:
        got["budget"] = cli_options.budget_from(kwargs)

    value = sample(f, option)
    args = (
        [a for v in value for a in (cli_options.flag(f.name), v)]
        if isinstance(value, tuple)
        else [
            cli_options.flag(f.name),
            str(value),
        ]
    )
    result = CliRunner().invoke(probe, args)
    assert result.exit_code == 0, result.output
    assert getattr(got["budget"], f.name) == value
    assert getattr(got["budget"], f.name) != f.default
    assert option.help in (_cli_params(prune_command)[f.name].help or "")


@pytest.mark.parametrize(("f", "option"), FIELDS, ids=[f.name for f, _ in FIELDS])
def test_every_field_is_a_recipe_setting_that_reaches_the_budget(
    f: dataclasses.Field, option: Option
) -> None:
    value = sample(f, option)
    if option.from_build:  # where a latency target is measured: the build's backend and optimal batch
        assert f.name not in PruneSettings.model_fields
        build = {"backend": value} if f.name == "backend" else {"batch": [1, value, value]}
        recipe = Recipe.model_validate({"build": build})
        assert getattr(recipe.budget(), f.name) == value
        return
    yaml_value = list(value) if isinstance(value, tuple) else value
    criterion = ["dead", "l1"] if option.target else ["dead"]
    prune = PruneSettings.model_validate({"criterion": criterion, f.name: yaml_value})
    assert getattr(prune.budget(), f.name) == value
    assert getattr(Recipe.model_validate({"prune": prune.model_dump()}).budget(), f.name) == value


def test_a_recipe_value_out_of_range_is_refused_at_its_key() -> None:
    for f, option in FIELDS:
        if option.interval is None or option.from_build:
            continue
        outside = (option.interval.low or 0) - 1
        with pytest.raises(ValueError, match=f.name):
            PruneSettings.model_validate({"criterion": ["dead", "l1"], f.name: outside})


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_is_a_sweep_axis_and_a_results_column(target: str) -> None:
    f, option = next((f, o) for f, o in FIELDS if f.name == target)
    value = sample(f, option)
    assert target in Axes.model_fields and target in CSV_COLUMNS
    assert getattr(Axes.model_validate({target: [value]}), target) == [value]
    settings = {"criterion": "l1", target: value, "precision": "fp32", "backend": "onnxruntime", "batch": 1}
    assert getattr(point_recipe(Recipe(), settings).prune, target) == value


def test_a_field_added_to_budget_is_an_option_and_a_recipe_key_with_no_other_edit(monkeypatch) -> None:
    @dataclasses.dataclass(frozen=True)
    class Wider(Budget):
        max_params: float | None = budget_field(
            None, "Keep at most this fraction of the parameters.", interval=FRACTION_TO_KEEP
        )

    monkeypatch.setattr(options_module, "Budget", Wider)

    @click.command()
    @cli_options.budget_options
    def probe(**kwargs: Any) -> None:
        pass

    assert _cli_params(probe)["max_params"].help == "Keep at most this fraction of the parameters."
    key = _budget_keys()["max_params"]
    assert key[1] is None  # the default
    with pytest.raises(UsageError, match=r"--max-params 1\.5: must be in \(0, 1\]"):
        Wider(max_params=1.5)
