"""Options and helpers shared by several CLI verbs."""

from __future__ import annotations

import dataclasses
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import click

from deploysparse import input_shapes
from deploysparse.backends import DEFAULT_BACKEND, backend_names, check_backend_name, get_backend
from deploysparse.budget import DEAD, Budget, Option, flag, option_fields, value_type
from deploysparse.errors import UsageError


class RegistryChoice(click.Choice, ABC):
    """A choice among the names a registry holds when the option is parsed or shown (`names`), not
    when the CLI was imported: a name registered later is a choice too, and a registry that is slow
    to import is not imported by `deploysparse --help`."""

    def __init__(self) -> None:
        super().__init__([])

    @property
    def choices(self) -> tuple[str, ...]:
        return self.names()

    @choices.setter
    def choices(self, _value: Any) -> None:
        pass  # click.Choice sets its choices once; these are read from the registry every time

    @abstractmethod
    def names(self) -> tuple[str, ...]:
        """The registry's names now."""


class BackendChoice(RegistryChoice):
    """--backend: a name in the backend registry."""

    def names(self) -> tuple[str, ...]:
        return backend_names()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The name, or the project's one-line UsageError naming the registered backends."""
        return check_backend_name(value)


# The budget's options: one click option per Budget field, named after it (--flops-target ->
# flops_target), with the help, default and choices the field declares (deploysparse.budget.options).
# Only the backend names come from elsewhere: the backend registry.
_CHOICES: dict[str, click.ParamType] = {"backend": BackendChoice()}


def budget_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one option per Budget field to a click command; `budget_from(kwargs)` reads them back."""
    for f, option in reversed(list(option_fields())):
        kind = value_type(f.name)
        if kind is tuple:  # a list of names: the option is repeated
            command = click.option(flag(f.name), multiple=True, help=option.help)(command)
            continue
        command = click.option(
            flag(f.name),
            type=_option_type(f.name, option, kind),
            default=f.default,
            show_default=f.default is not None,
            help=option.help,
        )(command)
    return command


def _option_type(name: str, option: Option, kind: type) -> click.ParamType:
    """The click type of a Budget field: its choices, or its value type (a float must be finite: NaN
    is no budget). Ranges are Budget's to check, with the same message everywhere."""
    if option.choices:
        return click.Choice(list(option.choices))
    if name in _CHOICES:
        return _CHOICES[name]
    return FiniteFloat() if kind is float else click.types.convert_type(kind)


def budget_from(options: dict[str, Any]) -> Budget:
    """The Budget the budget_options of a command were given (removed from `options`)."""
    fields = {f.name: options.pop(f.name) for f in dataclasses.fields(Budget)}
    return Budget(**fields)


class CriterionChoice(RegistryChoice):
    """--criterion: `dead` or a name in the CRITERIA registry (imported when first needed, so
    `deploysparse --help` does not load scipy)."""

    def names(self) -> tuple[str, ...]:
        from deploysparse.criteria import criterion_names

        return criterion_names()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The name, or the project's one-line UsageError (not click's usage block)."""
        if value in self.choices:
            return value
        raise UsageError(f"--criterion {value}: unknown; choose one of {', '.join(self.choices)}")


def backend_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--backend, one of the registered backends, default DEFAULT_BACKEND."""
    return click.option(
        "--backend", type=BackendChoice(), default=DEFAULT_BACKEND, show_default=True, help=help_text
    )


def count_option(
    *decls: str, default: int, help_text: str, minimum: int = 1
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An integer option of at least `minimum` (runs, samples, a batch size), its default shown."""
    return click.option(
        *decls, type=click.IntRange(min=minimum), default=default, show_default=True, help=help_text
    )


def json_quiet_options(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--json (print `what` as JSON) and -q/--quiet (no progress bar), of a verb that shows a progress
    bar; the command silences it with either: `progress.set_quiet(quiet or as_json)`."""

    def add(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option("-q", "--quiet", is_flag=True, help="No progress bar.")(command)
        return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")(command)

    return add


def require_profiler(backend: str) -> None:
    """UsageError unless `backend` has a per-layer profiler (--per-layer), naming those that do."""
    if not get_backend(backend).has_profiler:
        profilers = [name for name in backend_names() if get_backend(name).has_profiler]
        raise UsageError(
            f"--per-layer needs a backend with a per-layer profiler, and {backend} has none; "
            f"use --backend {' or '.join(profilers)}"
        )


def criterion_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--criterion, default dead."""
    return click.option(
        "--criterion",
        type=CriterionChoice(),
        default=DEAD,
        show_default=True,
        help="How channels are ranked; dead removes only the provably constant filters.",
    )(command)


def analysis_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--calib, --input-shape and --dead-threshold: what `analyze` and `prune` read a model with."""
    command = click.option(
        "--dead-threshold",
        type=FINITE_NON_NEGATIVE,
        default=1e-3,
        show_default=True,
        help="Also treat filters this small (relative norm, or |BN scale|) as dead; not exact, measured.",
    )(command)
    command = input_shape_option("Shape to analyse each input at (default: the data's, else the model's).")(
        command
    )
    return click.option("--calib", help="Calibration data (.npy for one input, .npz keyed by input name).")(
        command
    )


def input_shape_option(purpose: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--input-shape, repeatable, in every form `deploysparse.input_shapes` parses; what it is for in
    this command comes first in its help (deploysparse.run_shapes: the option, else data, else the model)."""
    return click.option(
        "--input-shape",
        "input_shape",
        multiple=True,
        help=f"{purpose} 1x3x640x640, 1,3,640,640, NAME:1x3x640x640 or a:1x3x8x8,b:1x1x8x8.",
    )


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
