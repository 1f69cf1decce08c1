"""Options and helpers shared by several CLI verbs."""

from __future__ import annotations

import json

import click

from deploysparse.errors import UsageError


def parse_input_shapes(values: tuple[str, ...]) -> dict[str, list[int]] | None:
    """`--input-shape NAME:1x3x32x32` (or `1,3,32,32` for a single-input model) -> {name: dims}."""
    if not values:
        return None
    shapes: dict[str, list[int]] = {}
    for value in values:
        name, _, dims = value.rpartition(":")
        try:
            parsed = [int(d) for d in dims.replace("x", ",").split(",") if d]
        except ValueError as exc:
            raise UsageError(f"--input-shape {value!r}: expected dims like 1,3,32,32") from exc
        if not parsed:
            raise UsageError(f"--input-shape {value!r}: expected dims like 1,3,32,32")
        shapes[name or ""] = parsed
    return shapes


def echo_json(data: dict) -> None:
    click.echo(json.dumps(data, indent=1, default=_plain))


def _plain(value):
    try:
        return value.tolist()
    except AttributeError:
        return str(value)
