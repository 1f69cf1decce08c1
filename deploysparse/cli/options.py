"""Options and helpers shared by several CLI verbs."""

from __future__ import annotations

import json
import math

import click

from deploysparse import input_shapes


def parse_input_shapes(values: tuple[str, ...]) -> dict[str, list[int]] | None:
    """`--input-shape` values (every form `deploysparse.input_shapes` accepts) -> {name: dims}."""
    if not values:
        return None
    return {name: list(dims) for name, dims in input_shapes.parse_input_shapes(values).items()}


class FiniteFloat(click.ParamType):
    """A float that is finite (click's FloatRange lets NaN through) and at least `minimum`."""

    name = "number"

    def __init__(self, minimum: float | None = None) -> None:
        self.minimum = minimum

    def convert(self, value, param, ctx) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.minimum is not None and number < self.minimum:
            self.fail(f"{value!r} is below {self.minimum}", param, ctx)
        return number


FINITE_NON_NEGATIVE = FiniteFloat(0.0)


def echo_json(data: dict) -> None:
    click.echo(json.dumps(data, indent=1, default=_plain))


def _plain(value):
    try:
        return value.tolist()
    except AttributeError:
        return str(value)
