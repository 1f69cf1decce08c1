"""sweep.yaml: which models, which data, which axes, and how the best point is chosen.

A sweep is a recipe multiplied out: every point is the sweep's base recipe with a few settings
replaced (criterion, budget, precision, backend, batch size), validated by the recipe schema itself,
so a point cannot hold a setting a recipe could not. The file is read with the recipe's loader:
unknown keys are errors with the file and line, like in a recipe.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from deploysparse.budget import DEAD, TARGETS
from deploysparse.criteria import criterion_names, takes_budget
from deploysparse.errors import DeploysparseError
from deploysparse.frontend.model_source import is_entry_point
from deploysparse.recipe import (
    BackendName,
    Criterion,
    Precision,
    Recipe,
    RecipeError,
    budget_value,
    describe_validation_error,
    load_recipe,
    read_yaml_mapping,
)

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Positive = Annotated[int, Field(ge=1)]
BUDGET_KEYS = TARGETS  # the budget axis: every target a Budget declares (ratio, flops_target, latency_target)


class SweepError(DeploysparseError):
    """A sweep file is missing, is not YAML, or has an unknown key or a value of the wrong type."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Section):
    """One model of the sweep: an .onnx file, or `package.module:factory` (+ weights) exported by torch."""

    model: str
    weights: str | None = None
    input_shape: list[Positive] | None = None
    name: str = ""  # label in tables and charts; default: the file or factory name

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return self.model.rpartition(":")[2] if is_entry_point(self.model) else Path(self.model).name


class DataSpec(_Section):
    """Calibration and labelled validation data: a path (.npy/.npz/folder) or `module:function`.

    A function for `val` may return (inputs, labels), which fills `labels` too.
    """

    calib: str
    val: str | None = None  # default: the calibration data
    labels: str | None = None


class Range(_Section):
    """A continuous interval for a search algorithm (`search` other than grid)."""

    min: Fraction
    max: Fraction

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min >= self.max:
            raise ValueError(f"min {self.min} must be below max {self.max}")
        return self


class _CriterionAxis(_Section):
    criterion: list[Criterion] | None = None  # ranking criterion after `dead` (or `dead` alone)


# One axis per budget target, its values bounded as the recipe's key (a Range for a search algorithm);
# a latency target is measured on the point's backend and batch.
_BudgetAxes: Any = create_model(
    "_BudgetAxes",
    __base__=_CriterionAxis,
    **{key: (list[budget_value(key)] | Range | None, None) for key in BUDGET_KEYS},
)


class Axes(_BudgetAxes):
    """The settings that vary; a missing axis takes the base recipe's value."""

    precision: list[Precision] | None = None
    backend: list[BackendName] | None = None
    batch: list[Positive] | None = None  # benchmark batch size (and the build's optimal batch)

    @field_validator("criterion", "precision", "backend", "batch", *BUDGET_KEYS, mode="before")
    @classmethod
    def _one_value_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | int | float) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _not_empty(self) -> Axes:
        for name in ("criterion", "precision", "backend", "batch", *BUDGET_KEYS):
            value = getattr(self, name)
            if isinstance(value, list) and not value:
                raise ValueError(f"axis {name} is empty; give at least one value or leave it out")
        return self


class Finetune(_Section):
    """Accuracy recovery: `function(compact_module, **args)` returns the module trained."""

    function: str
    args: dict[str, Any] = {}

    @field_validator("function")
    @classmethod
    def _entry_point(cls, value: str) -> str:
        if not is_entry_point(value):
            raise ValueError(f"expected 'package.module:function', got {value!r}")
        return value


class Select(_Section):
    """Which point becomes best.json: the best `goal` among points that meet every limit.

    "Highest accuracy with p50 <= 2 ms" is `goal: max_accuracy, max_p50_ms: 2`; "smallest model
    with an accuracy drop of at most 0.5 points" is `goal: min_size, max_accuracy_drop: 0.005`.
    """

    goal: Literal["max_accuracy", "min_latency", "min_size", "min_flops"] = "max_accuracy"
    max_p50_ms: Annotated[float, Field(gt=0.0)] | None = None
    max_accuracy_drop: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    max_size_bytes: Positive | None = None
    require_passed: bool = True  # the recipe's validation thresholds must hold too


class Search(_Section):
    """How points are chosen: every combination (`grid`) or a Ray Tune search algorithm.

    A search algorithm (`random`: Tune's seeded sampler) draws `samples` points per model from the
    axes (a `flops_target` or `ratio` axis may be a {min, max} range); every trial reports the
    selection rule's score, so "the largest FLOPs cut whose accuracy drop stays under a limit" is
    `goal: min_flops, max_accuracy_drop: ...` with a `flops_target` range. Only `grid` runs
    without Ray.
    """

    algorithm: Literal["grid", "random"] = "grid"
    samples: Positive = 8
    seed: int = 0


class RaySettings(_Section):
    """Resources of a point on a Ray cluster, and where latency is measured."""

    cpus_per_point: Annotated[float, Field(gt=0.0)] = 1.0
    resources_per_point: dict[str, Annotated[float, Field(gt=0.0)]] = {}  # e.g. {GPU: 1}
    latency_resource: str = "deploysparse-bench"  # custom resource every benchmarking node offers
    max_retries: Annotated[int, Field(ge=0)] = 2  # a crashed point is run again this many times
    max_concurrent: Positive | None = None
    storage: str | None = (
        None  # where Tune keeps trial files: shared by all nodes (NFS, s3://); default OUTDIR/tune
    )


class Sweep(_Section):
    """A whole sweep file."""

    name: str = ""
    models: list[ModelSpec | str]
    data: DataSpec
    recipe: str | dict[str, Any] = "x86-cpu-onnxruntime"  # base recipe: a file, a packaged name, or inline
    axes: Axes = Axes()
    select: Select = Select()
    search: Search = Search()
    finetune: Finetune | None = None
    ray: RaySettings = RaySettings()
    _source: Path | None = PrivateAttr(default=None)
    _base: Recipe | None = PrivateAttr(default=None)

    @field_validator("models")
    @classmethod
    def _models(cls, models: list[ModelSpec | str]) -> list[ModelSpec | str]:
        if not models:
            raise ValueError("name at least one model")
        return [ModelSpec(model=m) if isinstance(m, str) else m for m in models]

    @field_validator("search", mode="before")
    @classmethod
    def _search_shorthand(cls, value: Any) -> Any:
        return {"algorithm": value} if isinstance(value, str) else value

    @field_validator("finetune", mode="before")
    @classmethod
    def _finetune_shorthand(cls, value: Any) -> Any:
        return {"function": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _axes_fit_search(self) -> Sweep:
        ranges = [k for k in BUDGET_KEYS if isinstance(getattr(self.axes, k), Range)]
        if ranges and self.search.algorithm == "grid":
            raise ValueError(f"axes.{ranges[0]}: a range needs a search algorithm (search: random)")
        if ranges and sum(getattr(self.axes, k) is not None for k in BUDGET_KEYS) > 1:
            raise ValueError(f"with a search algorithm give one budget axis: {' or '.join(BUDGET_KEYS)}")
        return self

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def base_recipe(self) -> Recipe:
        """The recipe every point starts from."""
        if self._base is None:
            raise SweepError("the base recipe is resolved by load_sweep")
        return self._base

    @property
    def folder(self) -> Path | None:
        """The sweep file's folder: its relative paths start there."""
        return self.source.parent if self.source is not None else None

    def is_entry_point(self, text: str) -> bool:
        """Whether a model or data text of this sweep names a callable rather than a file
        (deploysparse.frontend.model_source decides; a file is looked for in the sweep's folder)."""
        return is_entry_point(text, self.folder)

    def resolve(self, path: str | None) -> str | None:
        """A path from the sweep file, relative to the sweep file's folder (entry points unchanged)."""
        if path is None or self.folder is None or self.is_entry_point(path) or Path(path).is_absolute():
            return path
        return str(self.folder / path)

    def model_specs(self) -> list[ModelSpec]:
        return [m for m in self.models if isinstance(m, ModelSpec)]


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; any problem is a SweepError naming the file, line and key."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: sweep file not found")
    root, data = read_yaml_mapping(path, SweepError, "a sweep is a mapping (models, data, axes, ...)")
    data.setdefault("name", path.name.removesuffix(".yaml").removesuffix(".yml"))
    try:
        sweep = Sweep.model_validate(data)
    except ValidationError as exc:
        raise SweepError(describe_validation_error(exc, root, path, Sweep)) from exc
    sweep._source = path
    sweep._base = _base_recipe(sweep.recipe, path, root)
    for spec in sweep.model_specs():
        if spec.weights is not None and not sweep.is_entry_point(spec.model):
            raise SweepError(f"{path}: models: weights apply to an entry point, not to {spec.model}")
    return sweep


def _base_recipe(recipe: str | dict[str, Any], sweep_path: Path, root: Any) -> Recipe:
    if isinstance(recipe, dict):
        try:
            return Recipe.model_validate({"name": sweep_path.stem, **recipe})
        except ValidationError as exc:
            raise SweepError(describe_validation_error(exc, root, sweep_path, Recipe, ("recipe",))) from exc
    candidate = sweep_path.parent / recipe
    try:
        return load_recipe(candidate if candidate.is_file() else recipe)
    except RecipeError as exc:
        raise SweepError(f"{sweep_path}: recipe: {exc}") from exc


def grid_settings(sweep: Sweep) -> list[dict[str, Any]]:
    """Every combination of the axes, each a dict of the settings that differ from the base recipe.

    Budgets are one axis: each value of a target (BUDGET_KEYS: ratio, flops_target, latency_target) is
    one budget.
    """
    base = sweep.base_recipe
    axes = sweep.axes
    criteria = axes.criterion or (base.prune.ranking[:1] or [DEAD])
    budgets: list[tuple[str, float] | None] = [
        (key, value) for key in BUDGET_KEYS for value in (getattr(axes, key) or [])
    ]
    if not budgets:
        base_budget = next(((k, getattr(base.prune, k)) for k in BUDGET_KEYS if getattr(base.prune, k)), None)
        budgets = [base_budget]
    combos = itertools.product(
        criteria,
        budgets,
        axes.precision or [base.build.precision],
        axes.backend or [base.build.backend],
        axes.batch or [base.bench.batches[0]],
    )
    points = []
    for criterion, budget, precision, backend, batch in combos:
        settings: dict[str, Any] = {"criterion": criterion}
        if budget is not None and takes_budget(criterion):
            settings[budget[0]] = budget[1]
        settings.update(precision=precision, backend=backend, batch=batch)
        if settings not in points:
            points.append(settings)
    return points


def point_recipe(base: Recipe, settings: dict[str, Any]) -> Recipe:
    """The base recipe with one point's settings, validated by the recipe schema."""
    data = base.model_dump(mode="json", by_alias=True)
    criterion = settings["criterion"]
    if criterion not in criterion_names():
        raise SweepError(f"criterion {criterion!r} is not one of {', '.join(criterion_names())}")
    prune = data["prune"]
    prune["criterion"] = [DEAD, criterion] if takes_budget(criterion) else [DEAD]
    for key in BUDGET_KEYS:
        prune[key] = settings.get(key)
    if takes_budget(criterion) and not any(prune[k] for k in BUDGET_KEYS):
        raise SweepError(
            f"criterion {criterion} needs a budget: give {' or '.join(f'axes.{k}' for k in BUDGET_KEYS)}"
        )
    batch = int(settings["batch"])
    low, _, high = data["build"]["batch"]
    data["build"].update(
        backend=settings["backend"],
        precision=settings["precision"],
        batch=[min(low, batch), batch, max(high, batch)],
    )
    data["bench"]["batches"] = [batch]
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"])
        raise SweepError(f"point {settings}: {key}: {error['msg'].removeprefix('Value error, ')}") from exc
    recipe._source = base.source
    return recipe
