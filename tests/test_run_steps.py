"""One step sequence (deploysparse.pipeline.steps.run_steps) for `deploysparse run` and a sweep point.

They used to repeat the same seven steps and drifted: a sweep point timed no flushed original made
from its one load (it loaded and flushed the original again) and had no per-layer profile. Here the
bundled digits model (which carries denormal weights) goes through `run_recipe` and `run_point` with
the same recipe, and their reports must have the same sections down to every key, with the flushed
original timed and profiled in both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploysparse.backends.machine import usable_cores
from deploysparse.backends.yardstick import YARDSTICK_VERSION
from deploysparse.pipeline import RunInputs, run_recipe
from deploysparse.recipe import Recipe, load_recipe
from deploysparse.report import load_report
from deploysparse.sweep.point import PointJob, run_point

pytestmark = pytest.mark.slow  # a torch export and two whole runs


def fast_recipe(per_layer: bool = True) -> Recipe:
    """The packaged CPU recipe with a short benchmark (one batch, few iterations)."""
    recipe = load_recipe("x86-cpu-onnxruntime")
    bench = {"batches": [1], "warmup": 1, "iters": 3, "repeats": 1, "per_layer": per_layer}
    return recipe.model_copy(update={"bench": recipe.bench.model_copy(update=bench)})


def point_job(digits: dict[str, Path], recipe: Recipe) -> PointJob:
    return PointJob(
        key="k",
        model="digits",
        model_label="digits",
        settings={},
        recipe=recipe,
        source=str(digits["model"]),
        calib=str(digits["calib"]),
        data=str(digits["val"]),
        labels=str(digits["labels"]),
    )


def run_inputs(digits: dict[str, Path]) -> RunInputs:
    return RunInputs(
        model=str(digits["model"]),
        calib=str(digits["calib"]),
        data=str(digits["val"]),
        labels=str(digits["labels"]),
    )


def structure(value, path: str = "") -> set[str]:
    """Every key path in a JSON value (list items share the path `[]`)."""
    if isinstance(value, dict):
        return {f"{path}.{k}" for k in value} | {
            p for k, v in value.items() for p in structure(v, f"{path}.{k}")
        }
    if isinstance(value, list):
        return {p for item in value for p in structure(item, f"{path}[]")}
    return set()


def test_a_sweep_point_writes_the_report_a_run_writes(digits, tmp_path: Path) -> None:
    recipe = fast_recipe()
    run_recipe(recipe, run_inputs(digits), tmp_path / "run")
    point = tmp_path / "point"
    point.mkdir()
    run_point(point_job(digits, recipe), point)
    # as written: the schema fills absent sections with defaults, so the files are compared
    ran, pointed = (json.loads((folder / "report.json").read_text()) for folder in (tmp_path / "run", point))

    ran_keys, point_keys = structure(ran), structure(pointed)
    assert point_keys - ran_keys == {
        ".extra.sweep",
        *(p for p in point_keys if p.startswith(".extra.sweep.")),
    }
    assert ran_keys - point_keys == set()
    assert set(pointed["artifacts"]) == set(ran["artifacts"])  # the same files, hashed
    # and the same measurements: the flushed original timed and profiled beside the others
    for report in (ran, pointed):
        assert report["extra"]["denormals"]["original"]["total"] > 0  # the digits model has them
        timed = [k for k, v in report["latency"].items() if isinstance(v, list) and v]
        assert timed == ["original", "original_flushed", "compact", "yardstick"]
        assert {"fingerprint", "timing"} <= set(report["latency"])
        assert report["latency"]["yardstick_version"] == YARDSTICK_VERSION
        assert report["latency"]["fingerprint"]["threads"] == 1  # the packaged recipe's bench.threads
        assert report["layers"]["models"] == ["original", "original_flushed", "compact"]
    assert pointed["extra"]["sweep"]["key"] == "k"


def test_a_sweep_point_loads_the_original_once(digits, tmp_path: Path, model_loads) -> None:
    """The flushed original the point times is made from the one ModelProto it loaded for prune
    (before, measuring speed loaded the file again to flush it)."""
    run_point(point_job(digits, fast_recipe()), tmp_path)
    assert model_loads[digits["model"].resolve()] == 1, model_loads


def test_per_layer_false_skips_the_profile_in_a_run_and_a_point(digits, tmp_path: Path) -> None:
    recipe = fast_recipe(per_layer=False)
    recipe = recipe.model_copy(update={"bench": recipe.bench.model_copy(update={"threads": None})})
    ran = run_recipe(recipe, run_inputs(digits), tmp_path / "run")
    assert ran["latency"]["fingerprint"]["threads"] == usable_cores()  # threads: null, every usable core
    run_point(point_job(digits, recipe), tmp_path)
    pointed = load_report(tmp_path / "report.json")
    assert ran["layers"] is None and pointed.layers is None
    assert ran["recipe"]["settings"]["bench"]["per_layer"] is False  # the report says it was asked
    assert "original_flushed" in ran["latency"] and pointed.latency.original_flushed
