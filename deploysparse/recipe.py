"""Recipes: one YAML file that names the whole pipeline (prune, build, validate, bench, check) for a device.

A recipe is what a team commits next to its model so that every CI run prunes, builds and judges the
model the same way. A typo in a key must not silently fall back to a default (a misspelt
`max_layer_ratio` would prune far more than intended), so every section forbids unknown keys and an
error names the file and the line of the offending key.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from deploysparse.backends import DEFAULT_BACKEND, backend_names, get_backend
from deploysparse.backends.quantize import CALIBRATION_CHOICES, INT8_LAYERS
from deploysparse.budget import DEAD, Budget, option_fields, option_of, value_type
from deploysparse.errors import DeploysparseError, UsageError
from deploysparse.input_shapes import parse_input_shapes
from deploysparse.precision import DEFAULT_PRECISION, PRECISIONS, SPARSITY_PATTERNS


def one_of(names: Callable[[], Sequence[str]]) -> Any:
    """A string that must be one of `names()`, read when a value is checked (a registry may have grown
    since import), refused as pydantic refuses a Literal."""

    def known(value: str) -> str:
        allowed = names()
        if value not in allowed:
            raise PydanticCustomError(
                "literal_error", "Input should be {expected}", {"expected": ", ".join(map(repr, allowed))}
            )
        return value

    return Annotated[str, AfterValidator(known)]


def _criterion_names() -> tuple[str, ...]:
    from deploysparse.criteria import criterion_names  # not at import: the criteria load scipy

    return criterion_names()


Criterion = one_of(_criterion_names)  # as --criterion: dead or a registered criterion
Precision = one_of(lambda: PRECISIONS)
Sparsity = one_of(lambda: SPARSITY_PATTERNS)
BackendName = one_of(backend_names)  # as --backend: a name in the backend registry
Int8Layers = one_of(lambda: INT8_LAYERS)  # as --int8-layers
CalibrationMethod = one_of(lambda: CALIBRATION_CHOICES)  # as --calib-method


Positive = Annotated[int, Field(ge=1)]


class RecipeError(DeploysparseError):
    """A recipe file is missing, is not YAML, or has an unknown key or a value of the wrong type."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def budget_value(name: str) -> Any:
    """The schema of a Budget field's values: its type, bounded as Budget declares it (names: a list)."""
    option = option_of(name)
    kind = value_type(name)
    if kind is tuple:  # names: a YAML list
        return list[str]
    return Annotated[kind, Field(**option.interval.bounds())] if option.interval is not None else kind


def _budget_keys() -> dict[str, Any]:
    """The budget keys of `prune:`: one per Budget field a recipe sets there (a latency target's
    backend and batch are the build's), typed, bounded and defaulted as Budget declares it, so
    pydantic names the key and its line when a value is out of range."""
    keys: dict[str, Any] = {}
    for f, option in option_fields():
        if option.from_build:
            continue
        value = budget_value(f.name)
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        keys[f.name] = (value | None if f.default is None else value, default)
    return keys


class _Criteria(_Section):
    criterion: list[Criterion] = [DEAD]

    @field_validator("criterion", mode="before")
    @classmethod
    def _one_criterion_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


_BudgetKeys: Any = create_model("_BudgetKeys", __base__=_Criteria, **_budget_keys())


class PruneSettings(_BudgetKeys):
    """Which channels to remove and how many.

    With neither `ratio` nor `flops_target`, only the channels the criteria prove useless (dead
    filters) go; with one of them, the criteria rank channels and the budget decides how many go.
    The budget keys are deploysparse.budget.Budget's fields (meanings, defaults and checks as for
    the CLI); a latency target is measured on build.backend at the build's optimal batch.
    """

    dead_threshold: Annotated[float, Field(ge=0.0)] = 1e-3  # near-zero filters count as dead (measured)
    # A budget not met (report.json's pruning.budget_met) makes `deploysparse run` exit with code 3
    # once the report is written, as `prune --strict` does; a sweep records it per point instead.
    strict: bool = False

    @model_validator(mode="after")
    def _one_budget(self) -> PruneSettings:
        if not self.criterion:
            raise ValueError("criterion needs at least one criterion, e.g. [dead]")
        from deploysparse.criteria import budget_for

        try:
            budget_for(self.ranking[0] if self.ranking else DEAD, self.budget())
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def ranking(self) -> list[str]:
        """The criteria after `dead`: the ones that rank channels (a run takes one)."""
        return [c for c in self.criterion if c != DEAD]

    def budget(self) -> Budget:
        """The Budget these settings describe (a latency target's backend and batch: Recipe.budget)."""
        return Budget(
            **{f.name: getattr(self, f.name) for f, option in option_fields() if not option.from_build}
        )


class BuildSettings(_Section):
    """How the compact ONNX becomes an engine.

    `batch` is the [min, opt, max] batch size of the optimization profile, applied to dimension 0 of
    every input with the other dimensions taken from the model, so one recipe serves any CNN.
    `shapes` maps an input name to explicit [min, opt, max] shapes and wins over `batch` for it.
    TensorRT builds its optimization profile from these; ONNX Runtime uses `opt` for analysis.
    `sparsity: "2:4"` prunes the weights of the layers sparse tensor cores run (TensorRT only).
    """

    backend: BackendName = DEFAULT_BACKEND
    precision: Precision = DEFAULT_PRECISION
    batch: list[Positive] = [1, 1, 1]
    shapes: dict[str, list[list[Positive]]] = {}
    workspace_mb: Positive | None = None
    calibration: str | None = None  # INT8 calibration data; relative paths are relative to the recipe
    # INT8 (ONNX Runtime): layers measured slower in int8 stay float (auto) or none do (all); the
    # calibration method, or auto for the best agreement on held-out data (backends/quantize.py)
    int8_layers: Int8Layers = "auto"
    calibration_method: CalibrationMethod = "auto"
    sparsity: Sparsity | None = None  # "2:4": structured sparsity for sparse tensor cores (TensorRT)

    @field_validator("batch")
    @classmethod
    def _batch_min_opt_max(cls, batch: list[int]) -> list[int]:
        if len(batch) != 3 or not batch[0] <= batch[1] <= batch[2]:
            raise ValueError(f"give [min, opt, max] batch sizes with min <= opt <= max, got {batch}")
        return batch

    @field_validator("shapes")
    @classmethod
    def _min_opt_max(cls, shapes: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
        for name, profile in shapes.items():
            if len(profile) != 3:
                raise ValueError(f"input {name!r}: give three shapes [min, opt, max], got {len(profile)}")
            low, opt, high = profile
            if not len(low) == len(opt) == len(high):
                raise ValueError(f"input {name!r}: min, opt and max shapes must have the same rank")
            if not all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True)):
                raise ValueError(f"input {name!r}: need min <= opt <= max in every dimension")
        return shapes

    @model_validator(mode="after")
    def _backend_takes_options(self) -> BuildSettings:
        for key, takes in (("workspace_mb", "takes_workspace"), ("sparsity", "takes_sparsity")):
            if getattr(self, key) is not None and not getattr(get_backend(self.backend), takes):
                takers = [name for name in backend_names() if getattr(get_backend(name), takes)]
                raise ValueError(f"{key} only applies to backend {' or '.join(takers)}")
        return self


class ValidateSettings(_Section):
    """When the compact model still counts as the same function as the original; null = not checked.

    Pruning beyond dead filters changes the function, so such recipes switch off the element-wise
    `atol`/`rtol` and judge by top-1 agreement and accuracy instead.
    """

    atol: Annotated[float, Field(ge=0.0)] | None = 1e-3
    rtol: Annotated[float, Field(ge=0.0)] | None = 1e-3
    min_cosine: Annotated[float, Field(ge=-1.0, le=1.0)] | None = 0.999
    min_top1_agreement: Annotated[float, Field(ge=0.0, le=1.0)] | None = 0.99
    max_accuracy_drop: Annotated[float, Field(ge=0.0, le=1.0)] | None = 0.01


class BenchSettings(_Section):
    """How latency is measured: after a warm-up of at least `warmup` calls until the calls stop
    getting faster, `repeats` runs (rounds, the original and the compact model taking turns) of
    `iters` timed calls per model and batch size, and, with `per_layer`, one profile of every layer
    (ONNX Runtime recipes) at the largest batch, with `threads` intra-op threads (every usable core
    when null).

    `max_seconds` bounds the whole measurement (the benchmark and the profile): a heavy model gets
    fewer calls and may lose a large batch size, each loss named in the report
    (deploysparse.pipeline.time_box); null: the counts as given, however long they take."""

    batches: list[Positive] = [1]
    warmup: Annotated[int, Field(ge=0)] = 10
    iters: Positive = 50
    repeats: Positive = 5
    per_layer: bool = True  # report.json's `layers`; off: a shorter run (a sweep of many points)
    max_seconds: Annotated[float, Field(gt=0)] | None = 60.0
    # Intra-op threads of every timed model; null: every usable core. One thread keeps a shared CI
    # runner's figures comparable: with a core taken by another job, two threads wait on each other.
    threads: Positive | None = None


class CheckSettings(_Section):
    """Default tolerances of `deploysparse check` for reports made with this recipe."""

    latency_tolerance: Annotated[float, Field(ge=0.0)] = 0.10  # relative growth of p50/p99 allowed
    accuracy_tolerance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.005  # absolute drop allowed


InputShape = str | list[Positive] | dict[str, list[Positive]]


class Recipe(_Section):
    """A whole pipeline. `source` is the file it came from (None when built in code).

    `input_shape` is the shape the run analyses, builds and benchmarks the model at, in any form
    `--input-shape` takes (`1x3x640x640`, `x:1,3,640,640`, a list of sizes, or input name -> sizes);
    `run --input-shape` wins over it, and without either the data's shape is used
    (deploysparse.run_shapes). `validate` is stored as `validate_` because pydantic models already own
    a `validate` method.
    """

    name: str = ""
    description: str = ""
    input_shape: InputShape | None = None
    prune: PruneSettings = PruneSettings()
    build: BuildSettings = BuildSettings()
    validate_: ValidateSettings = Field(default=ValidateSettings(), alias="validate")
    bench: BenchSettings = BenchSettings()
    check: CheckSettings = CheckSettings()
    _source: Path | None = PrivateAttr(default=None)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def source(self) -> Path | None:
        return self._source

    @field_validator("input_shape")
    @classmethod
    def _shape_parses(cls, value: InputShape | None) -> InputShape | None:
        if value is not None:
            try:
                _parsed_shapes(value)
            except UsageError as exc:
                raise ValueError(str(exc)) from None
        return value

    def input_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """`input_shape` as input name -> sizes ("" for the only input), as --input-shape parses."""
        return None if self.input_shape is None else _parsed_shapes(self.input_shape)

    def at_shapes(self, shapes: Mapping[str, Sequence[int]]) -> Recipe:
        """This recipe with `input_shape` set to the run's shapes: what a measurement elsewhere (a Ray
        node, which receives the recipe and the model files only) feeds the models at."""
        return self.model_copy(update={"input_shape": {name: list(dims) for name, dims in shapes.items()}})

    @model_validator(mode="after")
    def _bench_batches_fit_profile(self) -> Recipe:
        low, _, high = self.build.batch
        if get_backend(self.build.backend).needs_shape_profile and not self.build.shapes:
            outside = [b for b in self.bench.batches if not low <= b <= high]
            if outside:
                raise ValueError(f"bench batches {outside} lie outside build.batch [{low}, {high}]")
        return self

    def budget(self) -> Budget:
        """The recipe's Budget: the `prune:` keys, with a latency target measured where the model is
        built (the Budget fields a recipe sets from its build section: its backend and optimal batch)."""
        return Budget.of(self.prune.budget(), backend=self.build.backend, batch=self.build.batch[1])

    def calibration_path(self) -> Path | None:
        """The recipe's calibration data, resolved against the recipe's folder."""
        if self.build.calibration is None:
            return None
        path = Path(self.build.calibration)
        if not path.is_absolute() and self.source is not None:
            path = self.source.parent / path
        return path

    def to_report(self) -> dict[str, Any]:
        """The recipe section of report.json: name, source file and every setting (defaults included)."""
        return {
            "name": self.name,
            "source": str(self.source) if self.source else None,
            "settings": self.model_dump(mode="json", by_alias=True, exclude={"name", "description"}),
        }


RECIPE_SHAPE = "the recipe's input_shape"


def _parsed_shapes(value: InputShape) -> dict[str, tuple[int, ...]]:
    if isinstance(value, str):
        return parse_input_shapes([value], "input_shape")
    if isinstance(value, list):
        return {"": tuple(value)}
    return {name: tuple(dims) for name, dims in value.items()}


def packaged_recipes() -> list[str]:
    """Names of the recipes shipped inside the package (usable as `deploysparse run NAME`)."""
    folder = importlib.resources.files("deploysparse") / "recipes"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve_recipe(path_or_name: str | Path) -> Path:
    """A recipe file path; a bare name such as `x86-cpu-onnxruntime` means the packaged recipe."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    if path.suffix == "" and path.parent == Path("."):
        packaged = importlib.resources.files("deploysparse") / "recipes" / f"{path.name}.yaml"
        if packaged.is_file():
            return Path(str(packaged))
    raise RecipeError(
        f"recipe file not found: {path_or_name} (packaged recipes: {', '.join(packaged_recipes())})"
    )


def load_recipe(path_or_name: str | Path) -> Recipe:
    """Read and validate a recipe; any problem is a RecipeError naming the file, line and key."""
    path = resolve_recipe(path_or_name)
    root, data = read_yaml_mapping(path, RecipeError, "a recipe is a mapping of sections (prune, build, ...)")
    data.setdefault("name", path.name.removesuffix(".yaml").removesuffix(".yml"))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_describe(exc, root, path)) from exc
    recipe._source = path
    return recipe


# Shared with other YAML files validated the same way (deploysparse.sweep.config): one loader, one
# error format.


def read_yaml_mapping(
    path: Path, error: type[DeploysparseError], what: str
) -> tuple[yaml.Node | None, dict[str, Any]]:
    """The YAML node tree (for line numbers) and the mapping in `path`; any problem raises `error`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read: {exc}") from exc
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{where}: not valid YAML: {problem}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(f"{path}:1: {what}, got {type(data).__name__}")
    try:
        _reject_duplicate_keys(root, path)
    except RecipeError as exc:
        raise error(str(exc)) from None
    return root, data


def describe_validation_error(
    exc: ValidationError,
    root: yaml.Node | None,
    path: Path,
    schema: type[BaseModel],
    prefix: tuple[str, ...] = (),
) -> str:
    """`file:line: key: what is wrong` for the first error of validating `path` against `schema`;
    `prefix` is where the validated mapping sits in the file (e.g. a recipe inline in a sweep)."""
    return _describe(exc, root, path, schema, prefix)


def _describe(
    exc: ValidationError,
    root: yaml.Node | None,
    path: Path,
    schema: type[BaseModel] | None = None,
    prefix: tuple[str, ...] = (),
) -> str:
    """One line for the first error: `file:line: key: what is wrong`."""
    error = exc.errors()[0]
    loc = [part for part in error["loc"] if not (isinstance(part, str) and part.startswith("function-"))]
    key = ".".join(str(part) for part in (*prefix, *loc))
    line = _line_of(root, [*prefix, *loc])
    where = f"{path}:{line}" if line else str(path)
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], schema or Recipe)
        return f"{where}: unknown key '{key}'" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if error["type"] == "missing":
        return f"{where}: missing key '{key}'"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {key}: {message}" if key else f"{where}: {message}"


def _allowed_keys(section: list[str | int], model: type[BaseModel]) -> list[str]:
    for part in section:
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    return [f.alias or n for n, f in model.model_fields.items()]


def _line_of(node: yaml.Node | None, loc: list[str | int]) -> int | None:
    """1-based line of the key (or value) at `loc`; the deepest existing ancestor's line if it is absent."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == str(part)), None)
            if match is None:
                return line
            key_node, node = match
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _reject_duplicate_keys(node: yaml.Node | None, path: Path) -> None:
    """yaml.safe_load keeps the last of two equal keys silently; a recipe must say one thing."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.value in seen:
                raise RecipeError(
                    f"{path}:{key_node.start_mark.line + 1}: key '{key_node.value}' given twice"
                )
            seen.add(key_node.value)
            _reject_duplicate_keys(value_node, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(item, path)
