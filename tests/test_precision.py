"""Precisions are declared once (deploysparse.precision): `build` and `validate` offer exactly them,
a recipe and a sweep accept exactly them, a backend and validation refuse any other with one text, and
the tolerance help of `validate` shows each precision's defaults as validation applies them."""

from __future__ import annotations

import pytest

from deploysparse.backends.base import check_precision as backend_check
from deploysparse.cli.build import command as build_command
from deploysparse.cli.validate import command as validate_command
from deploysparse.errors import UsageError
from deploysparse.precision import DEFAULT_TOLERANCES, PRECISIONS, check_precision, defaults_help
from deploysparse.recipe import Recipe
from deploysparse.sweep.config import Axes
from deploysparse.validate import resolve_tolerances


def _choices(command, name: str) -> list[str]:
    return list(next(p for p in command.params if p.name == name).type.choices)


def test_the_cli_offers_the_declared_precisions() -> None:
    assert PRECISIONS == ("fp32", "fp16", "int8")
    assert _choices(build_command, "precision") == list(PRECISIONS)
    assert _choices(validate_command, "precision") == ["auto", *PRECISIONS]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_recipe_and_a_sweep_take_each_precision(precision: str) -> None:
    assert Recipe.model_validate({"build": {"precision": precision}}).build.precision == precision
    assert Axes.model_validate({"precision": precision}).precision == [precision]
    assert check_precision(precision) == backend_check(precision) == precision
    assert resolve_tolerances(precision) == DEFAULT_TOLERANCES[precision]


def test_another_precision_is_refused_everywhere_with_the_list() -> None:
    with pytest.raises(ValueError, match="'fp32', 'fp16', 'int8'"):
        Recipe.model_validate({"build": {"precision": "bf16"}})
    with pytest.raises(ValueError, match="'fp32', 'fp16', 'int8'"):
        Axes.model_validate({"precision": ["bf16"]})
    for check in (check_precision, backend_check, resolve_tolerances):
        with pytest.raises(UsageError, match=r"--precision must be one of fp32, fp16, int8, got 'bf16'"):
            check("bf16")


def test_tolerance_help_shows_the_defaults_validation_applies() -> None:
    assert defaults_help("atol") == "[fp32 0.0001, fp16 0.01, int8 off]"
    assert defaults_help("min_top1") == "[fp32 off, fp16 off, int8 0.9]"
    assert defaults_help("max_accuracy_drop") == "[off]"
    helps = {p.name: p.help for p in validate_command.params}
    assert defaults_help("min_cosine") in helps["min_cosine"]
    assert defaults_help("max_accuracy_drop") in helps["max_accuracy_drop"]
    with pytest.raises(ValueError, match="no tolerance"):
        defaults_help("cosine")
