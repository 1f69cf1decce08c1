"""`deploysparse run`: the CPU recipe end to end, and atomic output folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deploysparse import modelio
from deploysparse.pipeline import RunInputs, run_recipe, speed
from deploysparse.recipe import load_recipe
from deploysparse.report import load_report


@pytest.fixture
def model_and_data(exported, tmp_path: Path) -> tuple[Path, Path]:
    """A planted ResNet export and fresh random data of its input shape."""
    path = exported("resnet_basic", "dynamo")
    data = np.random.default_rng(7).standard_normal((16, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "data.npy", data)
    return path, tmp_path / "data.npy"


def _fast(recipe):
    """The packaged CPU recipe with a short benchmark, so the test takes seconds, and no rounding
    (the test nets have 8-16 channels: rounding to 8 would put every dead channel back)."""
    return recipe.model_copy(
        update={
            "bench": recipe.bench.model_copy(update={"iters": 5, "warmup": 1, "repeats": 2}),
            "prune": recipe.prune.model_copy(update={"round_to": 1}),
        }
    )


def test_run_cpu_recipe_end_to_end(model_and_data, tmp_path: Path) -> None:
    model, data = model_and_data
    out = tmp_path / "out"
    report = run_recipe(
        _fast(load_recipe("x86-cpu-onnxruntime")), RunInputs(model=str(model), calib=str(data)), out
    )

    for name in ("compact.onnx", "plan.json", "report.json", "report.html"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".staging-*")), "the staging folder must not survive a run"
    written = load_report(out / "report.json")
    assert written.cost.params_after < written.cost.params_before
    assert written.pruning.channels_removed == report["pruning"]["channels_removed"] > 0
    assert written.validation.passed and written.validation.max_abs_err < 1e-3
    assert [p.batch for p in written.latency.compact] == [1, 8]
    assert all(len(p.runs) == 2 for p in written.latency.compact)
    # every call kept (the CI gate's intervals), the machine and the conditions recorded
    assert all(len(run.samples_ms) == 5 for p in written.latency.compact for run in p.runs)
    assert written.latency.fingerprint is not None and written.latency.fingerprint.backends
    assert written.latency.timing is not None and written.latency.timing.rounds == 2
    artifacts = json.loads((out / "report.json").read_text())["artifacts"]
    assert "compact.onnx" in artifacts and "plan.json" in artifacts


def test_run_loads_the_original_model_once(model_and_data, tmp_path: Path, model_loads) -> None:
    """Every step reads the one ModelProto `run` loaded: prune analyses a copy of it (its normalised
    graph is not the original); the input shapes, the denormal-flushed copy and the report's
    denormal count are read from it once (OriginalFacts). Before, build, bench and the report each
    loaded the file again: 4 loads, each 0.4 s and the model's size in memory at 100 MB."""
    model, data = model_and_data
    run_recipe(
        _fast(load_recipe("x86-cpu-onnxruntime")),
        RunInputs(model=str(model), calib=str(data)),
        tmp_path / "out",
    )

    # 1: the run's own load; prune takes that ModelProto (and copies it), it does not load again.
    # The other load is the ONNX Runtime backend's, of the optimised compact model it wrote.
    assert model_loads[model.resolve()] == 1, model_loads
    assert sum(model_loads.values()) > 1, "the counter must also see the backend's load of its own output"


def test_failed_run_leaves_previous_artifacts_intact(model_and_data, tmp_path: Path, monkeypatch) -> None:
    model, data = model_and_data
    out = tmp_path / "out"
    recipe = _fast(load_recipe("x86-cpu-onnxruntime"))
    run_recipe(recipe, RunInputs(model=str(model), calib=str(data)), out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the run is stopped during the benchmark, after build and validation

    monkeypatch.setattr(speed, "benchmark_side_by_side", killed)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, RunInputs(model=str(model), calib=str(data)), out)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before
    assert not list(out.glob(".staging-*"))


def test_run_cli_reports_bad_recipe_key(tmp_path: Path, cli, model_and_data) -> None:
    model, data = model_and_data
    recipe = tmp_path / "r.yaml"
    recipe.write_text("prune:\n  critrion: [dead]\n")
    result = cli("run", recipe, "--model", model, "--calib", data, "-o", tmp_path / "out")
    assert result.code == 2
    assert "critrion" in result.err and "r.yaml" in result.err


def test_run_names_the_model_file_that_has_nothing_to_prune(tmp_path: Path, cli) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "no-filters",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    model = tmp_path / "relu-only.onnx"
    modelio.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((4, 3, 4, 4)).astype(np.float32))
    result = cli(
        "run",
        "x86-cpu-onnxruntime",
        "--model",
        model,
        "--calib",
        tmp_path / "data.npy",
        "-o",
        tmp_path / "out",
    )
    assert result.code == 2
    assert result.err.startswith(f"error: {model}: has no ") and "nothing to prune" in result.err
    assert len(result.err.strip().splitlines()) == 1
