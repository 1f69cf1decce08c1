"""The schema of report.json: what one `deploysparse run` measured, in a form a CI gate can compare.

Every section forbids unknown keys, so a report writer that misspells a key fails at once instead of
producing a report the gate silently half-reads; anything a writer wants to add beyond the schema
goes under `extra`. docs/ci.md shows a full example.
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deploysparse.errors import DeploysparseError

SCHEMA_VERSION = 1

NonNegative = Annotated[int, Field(ge=0)]
Millis = Annotated[float, Field(ge=0.0)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class ReportError(DeploysparseError):
    """A report or baseline file is missing, is not JSON, or lacks a key the schema requires."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelInfo(_Strict):
    """The input model: where it was and exactly which bytes (so a baseline is tied to one model)."""

    path: str
    sha256: str
    inputs: dict[str, list[int | str]] = {}  # input name -> shape used (str for a symbolic dimension)
    shape_source: str = ""  # where `inputs` came from: --input-shape, the recipe, the data or the model


class RecipeInfo(_Strict):
    """The recipe the run followed, every setting included (see `Recipe.to_report`)."""

    name: str
    source: str | None = None
    settings: dict[str, Any]


class Target(_Strict):
    """Where the latency was measured: figures from different targets are not comparable."""

    backend: str
    precision: str
    device: str = ""  # e.g. "x86_64, 2 cores, AMD EPYC 7B13" or "NVIDIA H100 80GB HBM3"


class Cost(_Strict):
    params_before: NonNegative
    params_after: NonNegative
    flops_before: NonNegative  # multiply-accumulates of one sample at the analysed input shape
    flops_after: NonNegative


class PinnedEntry(_Strict):
    """A channel space that may not be pruned, and the op that decided so (see graph.groups.PinnedSpace)."""

    group: str
    op: str
    node: str
    reason: str
    channels: NonNegative = 0  # how many of the group's channels this op pins


class PinShare(_Strict):
    """What one kind of pin holds (deploysparse.graph.pinned): groups, channels, MAC and param shares."""

    op: str
    reason: str
    groups: NonNegative
    channels: NonNegative
    macs_share: Unit
    params_share: Unit


class BudgetResult(_Strict):
    """The target asked and the value reached, in the target's unit (deploysparse.budget.outcome)."""

    target: Literal["ratio", "flops_target", "latency_target"]
    asked: float
    reached: float
    tolerance: float
    met: bool


class CappedGroup(_Strict):
    """A group --max-layer-ratio kept from the cut the ranking wanted."""

    group: str
    label: str = ""
    channels: Annotated[int, Field(ge=1)]
    wanted: NonNegative
    kept: NonNegative


class DeadCount(_Strict):
    """What became of the dead filters the analysis found (api.dead_accounting)."""

    found: NonNegative
    removed: NonNegative
    kept: NonNegative  # found but kept: to hold multiples of round_to, or by the plan
    round_to: Annotated[int, Field(ge=1)]
    near_zero_removed: NonNegative = 0  # removed near-zero (not exactly constant) filters
    message: str = ""  # "13 dead found, 0 removed, 13 kept to hold multiples of 16 (...)"


class Pruning(_Strict):
    criterion: str  # e.g. "dead" or "dead+l1"
    groups: NonNegative  # channel groups found
    groups_pruned: NonNegative  # groups that lost at least one channel
    channels_total: NonNegative
    channels_removed: NonNegative
    pinned: list[PinnedEntry] = []
    pinned_by_op: list[PinShare] = []
    budget_met: bool = True  # false: the recipe's target was not met (see `budget`)
    budget: BudgetResult | None = None  # None: no target (dead filters only)
    capped: list[CappedGroup] = []
    dead: DeadCount | None = None


class PlanGroup(_Strict):
    """One group of the plan: how many channels it had and how many the plan keeps."""

    id: str
    label: str = ""
    size: Annotated[int, Field(ge=1)]
    kept: NonNegative
    pinned: NonNegative = 0  # channels of the group that were pinned
    prunable: bool = True


class Plan(_Strict):
    groups: list[PlanGroup]
    notes: list[str] = []


class Validation(_Strict):
    """How closely the compact model answers like the original on fresh inputs."""

    samples: NonNegative
    max_abs_err: Annotated[float, Field(ge=0.0)]
    max_rel_err: Annotated[float, Field(ge=0.0)]
    cosine: Annotated[float, Field(ge=-1.0, le=1.0)]
    top1_agreement: Unit | None = None  # None for models whose output is not a class score
    accuracy_original: Unit | None = None  # None without labels
    accuracy_compact: Unit | None = None
    passed: bool
    failures: list[str] = []  # why it failed, one line per violated threshold
    warnings: list[str] = []  # what the data could not show (an original near zero: validate.py)
    input_shapes: dict[str, Any] | None = None  # the shapes validated at and their source (run_shapes)
    # the rest of validate.ValidationReport.to_json(), so that dict can be stored as it is
    backend: str = ""
    original: str = ""
    compact: str = ""
    tolerances: dict[str, Any] = {}
    precision: str = ""  # the precision whose default tolerances applied (fp32, fp16, int8)
    outputs: list[dict[str, Any]] = []


class LatencyRun(_Strict):
    """One of the repeated benchmark runs (a round of the interleaved measurement) at one batch size."""

    p50_ms: Millis
    p99_ms: Millis
    # Every timed call of the run in call order (ms, 4 significant digits): what `check` resamples
    # for its confidence intervals. Absent in reports written before deploysparse kept them.
    samples_ms: list[Millis] = []


class LatencyPoint(_Strict):
    """Latency at one batch size; the top-level percentiles pool all runs, `runs` keeps each one."""

    batch: Annotated[int, Field(ge=1)]
    p50_ms: Millis
    p90_ms: Millis
    p99_ms: Millis
    mean_ms: Millis | None = None
    throughput_per_s: Annotated[float, Field(ge=0.0)]
    iters: Annotated[int, Field(ge=1)] | None = None  # timed calls per run (the fewest; time-boxed)
    runs: list[LatencyRun] = []
    warmup_calls: NonNegative | None = None  # untimed calls before the first run, until settled
    warmup_settled: bool | None = None  # whether the calls had stopped getting faster by then
    outlier_runs: list[NonNegative] = []  # indices of runs whose p50 lies far from the others'

    def samples(self) -> list[list[float]] | None:
        """Every run's calls, when every run kept them (else None). Runs a time box cut short
        (`bench.max_seconds`) hold fewer calls: every run is then cut to the shortest, its first
        calls in call order, so the runs stay alike for the resampling."""
        rows = [run.samples_ms for run in self.runs]
        if not rows or not all(rows):
            return None
        shortest = min(len(row) for row in rows)
        return [row[:shortest] for row in rows]

    @property
    def median_p50(self) -> float:
        """Median over runs of each run's p50: robust to one run hit by a noisy neighbour."""
        return statistics.median(r.p50_ms for r in self.runs) if self.runs else self.p50_ms

    @property
    def median_p99(self) -> float:
        return statistics.median(r.p99_ms for r in self.runs) if self.runs else self.p99_ms

    @property
    def p50_spread(self) -> tuple[float, float]:
        """(min, max) of the runs' p50: how noisy this measurement was."""
        values = [r.p50_ms for r in self.runs] or [self.p50_ms]
        return min(values), max(values)


class SkippedBatchInfo(_Strict):
    """A batch size the recipe asked for that the model cannot take (run_shapes.SkippedBatch)."""

    batch: Annotated[int, Field(ge=1)]
    reason: str


class Fingerprint(_Strict):
    """The machine and runtime latency was measured on (backends/machine.py): milliseconds are
    compared with a baseline's only when every field matches."""

    arch: str
    cpu: str
    cores: Annotated[int, Field(ge=1)]  # cores the process could use (its affinity)
    cpu_flags: list[str]  # kernel-relevant instruction sets (avx512f, avx512_vnni, amx_tile, ...)
    device: str
    backends: dict[str, str]  # backend -> version
    threads: Annotated[int, Field(ge=1)] | None = None  # intra-op threads of the timed runners

    def differences(self, other: Fingerprint) -> list[str]:
        """What differs from `other`, one phrase per field ('cpu: 'A' vs 'B'')."""
        mine, theirs = self.model_dump(), other.model_dump()
        return [f"{key}: {mine[key]!r} vs {theirs[key]!r}" for key in mine if mine[key] != theirs[key]]


class TimingConditions(_Strict):
    """How latency was measured, and what explains a noisy figure without deciding comparability."""

    order: Literal["interleaved"] = "interleaved"  # the models took turns, reversed every round
    rounds: Annotated[int, Field(ge=1)]  # each model's runs per batch size (`bench.repeats`)
    iters: Annotated[int, Field(ge=1)]  # timed calls per run
    warmup: NonNegative  # the minimum warm-up; each point says how many calls it took
    affinity: list[NonNegative] = []  # the CPUs the process could run on
    load_average: list[float | None] = []  # 1-minute load average before and after timing


class Latency(_Strict):
    original: list[LatencyPoint] = []
    # The original with its denormal float32 weights set to zero, timed only when it has any: the
    # speed-up against it is what pruning did, the rest is what flushing did (see denormals.py).
    original_flushed: list[LatencyPoint] = []
    # The compact model in fp32, timed when the recipe builds another precision: the speed-up from
    # original to compact_fp32 is what pruning did, from compact_fp32 to compact what the precision did.
    compact_fp32: list[LatencyPoint] = []
    compact: list[LatencyPoint]
    # A fixed reference net (backends/yardstick.py) timed in the same rounds on its own inputs, and its version:
    # `check` compares a changed model relative to it (the runner's speed cancels in the ratio).
    yardstick: list[LatencyPoint] = []
    yardstick_version: str | None = None
    skipped_batches: list[SkippedBatchInfo] = []  # asked for, not measured (a static batch)
    fingerprint: Fingerprint | None = None  # absent in reports written before it was recorded
    timing: TimingConditions | None = None

    def compact_at(self, batch: int) -> LatencyPoint | None:
        return next((p for p in self.compact if p.batch == batch), None)

    def original_at(self, batch: int) -> LatencyPoint | None:
        return next((p for p in self.original if p.batch == batch), None)

    def original_flushed_at(self, batch: int) -> LatencyPoint | None:
        return next((p for p in self.original_flushed if p.batch == batch), None)

    def compact_fp32_at(self, batch: int) -> LatencyPoint | None:
        return next((p for p in self.compact_fp32 if p.batch == batch), None)

    def yardstick_at(self, batch: int) -> LatencyPoint | None:
        return next((p for p in self.yardstick if p.batch == batch), None)

    def precision_splits(self) -> list[tuple[int, float, float, float]]:
        """(batch, by pruning, by precision, together) at each batch where the compact model was also
        timed in fp32: the speed-ups original -> compact fp32 -> compact (median p50 of the runs)."""
        splits = []
        for compact in self.compact:
            original, fp32 = self.original_at(compact.batch), self.compact_fp32_at(compact.batch)
            if original is None or fp32 is None or not fp32.median_p50 or not compact.median_p50:
                continue
            pruning, precision = original.median_p50 / fp32.median_p50, fp32.median_p50 / compact.median_p50
            splits.append((compact.batch, pruning, precision, pruning * precision))
        return splits


class LayerRow(_Strict):
    """One node of ONNX Runtime's optimised graph: median kernel time per run in each model that has it."""

    node: str
    op: str = ""
    ms: dict[str, Millis]  # "original", "original_flushed", "compact" -> ms; absent where removed


class Layers(_Strict):
    """Per-layer latency (ONNX Runtime profiler), the models run interleaved (see profiling.py)."""

    batch: Annotated[int, Field(ge=1)]
    runs: Annotated[int, Field(ge=1)]
    models: list[str]
    rows: list[LayerRow]


class FloatLayer(_Strict):
    """A layer an int8 build kept in float, and the measurement that decided it."""

    node: str
    op: str = ""
    reason: str
    fp32_ms: Millis | None = None  # its kernel time in the fp32 model (when kept float for speed)
    int8_ms: Millis | None = None  # ... and in the all-int8 model


class Quantization(_Strict):
    """How an int8 build was quantised and whether it paid, on the machine that built it.

    `finding` is set when int8 was not faster than fp32 there (also among `warnings`): with every
    layer asked in int8 the run still publishes the int8 model, and says so; with `int8_layers:
    auto` it publishes the fp32 model, every layer listed in `float_layers`."""

    scheme: str  # e.g. "U8S8 QDQ, per-channel 8-bit weights, minmax calibration"
    reason: str  # why this scheme on this CPU
    calibration_method: str
    calibration_chosen_by: str
    float_layers: list[FloatLayer] = []
    layers_note: str = ""
    build_batch: Annotated[int, Field(ge=1)]
    build_fp32_ms: Millis  # the compact model, fp32 against int8, timed interleaved by the build
    build_int8_ms: Millis
    faster: bool
    finding: str | None = None
    # int8 against the compact model in fp32 on the validation data: what quantising alone changed
    top1_agreement: Unit | None = None
    cosine: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    accuracy_fp32: Unit | None = None
    accuracy_int8: Unit | None = None
    build: dict[str, Any] = {}  # the build metadata's `quantization`, as written


class Timestamps(_Strict):
    started: datetime
    finished: datetime


class Report(_Strict):
    """Everything one run produced, as written to report.json."""

    schema_version: Literal[1] = SCHEMA_VERSION
    model: ModelInfo
    recipe: RecipeInfo
    target: Target
    versions: dict[str, str | None]  # package -> version (None when not installed)
    cost: Cost
    pruning: Pruning
    plan: Plan
    validation: Validation
    latency: Latency
    layers: Layers | None = None
    quantization: Quantization | None = None  # int8 builds on a backend that measures its int8 choice
    warnings: list[str] = []
    timestamps: Timestamps
    artifacts: dict[str, str] = {}  # file name in the output folder -> sha256
    # model file in the output folder -> the external-data files it reads (relative, beside it)
    artifact_data: dict[str, list[str]] = {}
    extra: dict[str, Any] = {}

    @field_validator("versions")
    @classmethod
    def _names_the_toolchain(cls, versions: dict[str, str | None]) -> dict[str, str | None]:
        missing = [name for name in ("deploysparse", "onnx") if not versions.get(name)]
        if missing:
            raise ValueError(f"versions must name {', '.join(missing)}")
        return versions


def parse_report(data: Any, source: str = "report") -> Report:
    """Validate a report dict; a ReportError names `source` and the first key at fault."""
    if not isinstance(data, dict):
        raise ReportError(f"{source}: a report is a JSON object, got {type(data).__name__}")
    try:
        return Report.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "missing":
            raise ReportError(f"{source}: missing key '{key}'") from exc
        if error["type"] == "extra_forbidden":
            raise ReportError(f"{source}: unknown key '{key}'") from exc
        message = error["msg"].removeprefix("Value error, ")
        raise ReportError(f"{source}: key '{key}': {message}") from exc


def load_report(path: str | Path) -> Report:
    """Read and validate report.json (or a baseline); every problem names the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ReportError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot read: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}:{exc.lineno}: not JSON: {exc.msg}") from exc
    return parse_report(data, str(path))
