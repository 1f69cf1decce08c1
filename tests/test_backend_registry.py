"""register_backend: a backend defined outside the package (here onnx's own reference evaluator, a
second runtime written in numpy) is registered by name and driven through `build`, `bench`,
`validate` and `run` without editing any module of deploysparse; then it is gone again."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from deploysparse.backends import (
    Backend,
    Runner,
    backend_names,
    get_backend,
    register_backend,
    unregister_backend,
)
from deploysparse.backends.base import BuildRequest, Built, cpu_name
from deploysparse.calibration import model_input_specs
from deploysparse.errors import BackendError, DeploysparseError, UsageError
from deploysparse.modelio import load_model, save_model

NAME = "onnx-reference"


class ReferenceRunner(Runner):
    """onnx.reference.ReferenceEvaluator on one model file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        model = load_model(path)
        self._evaluator = ReferenceEvaluator(model)
        self.input_specs = model_input_specs(model)
        self.output_names = [o.name for o in model.graph.output]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self._evaluator.run(None, dict(feeds)), strict=True))


class ReferenceBackend(Backend):
    """The smallest complete backend: fp32 only, the artifact is the (flushed) model itself."""

    name = NAME

    def version(self) -> str:
        return onnx.__version__

    def device(self) -> str:
        return f"CPU: {cpu_name()}, onnx.reference"

    def runner(self, path, threads=None, *, spinning=True) -> Runner:
        return ReferenceRunner(path)

    def _artifact_path(self, out_dir: Path, precision: str) -> Path:
        return out_dir / "model.reference.onnx"

    def _build_artifact(self, request: BuildRequest) -> Built:
        if request.precision != "fp32":
            raise BackendError(f"{NAME} runs fp32 only")
        return Built([save_model(request.model, request.artifact)], {"evaluator": "ReferenceEvaluator"})


@pytest.fixture
def registered() -> Iterator[str]:
    register_backend(NAME, ReferenceBackend)
    try:
        yield NAME
    finally:
        unregister_backend(NAME)


@pytest.fixture
def model_and_data(exported, tmp_path: Path) -> tuple[Path, Path]:
    """A planted ResNet export (dead filters to remove) and fresh random data of its input shape."""
    data = np.random.default_rng(11).standard_normal((8, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "data.npy", data)
    return exported("resnet_basic", "dynamo"), tmp_path / "data.npy"


def test_a_registered_backend_builds_benches_and_validates(registered, model_and_data, tmp_path, cli) -> None:
    model, data = model_and_data
    assert NAME in backend_names() and isinstance(get_backend(NAME), ReferenceBackend)

    built = cli("build", model, "--backend", NAME, "-o", tmp_path / "out", "--json")
    assert built.code == 0, built.err
    result = json.loads(built.out)
    artifact = tmp_path / "out" / "model.reference.onnx"
    assert result["artifact"] == str(artifact) and result["backend"] == NAME
    metadata = json.loads((tmp_path / "out" / "model.reference.onnx.json").read_text())
    assert metadata["backend"] == NAME and metadata["version"] == onnx.__version__
    assert metadata["device"] == ReferenceBackend().device() and metadata["evaluator"] == "ReferenceEvaluator"
    assert metadata["precision"] == "fp32" and metadata["source_sha256"] and metadata["inputs"]

    bench = cli(
        "bench", artifact, "--backend", NAME, "--batch", "1,2", "--warmup", "1", "--iters", "2", "--json"
    )
    assert bench.code == 0, bench.err
    report = json.loads(bench.out)
    assert report["backend"] == NAME and [r["batch"] for r in report["results"]] == [1, 2]

    checked = cli("validate", model, artifact, "--backend", NAME, "--data", data, "--json")
    assert checked.code == 0, checked.err
    validation = json.loads(checked.out)
    assert validation["passed"] and validation["backend"] == NAME and validation["max_abs_err"] < 1e-4

    profiled = cli("bench", artifact, "--backend", NAME, "--per-layer")
    assert profiled.code == 2 and f"and {NAME} has none; use --backend onnxruntime" in profiled.err
    with pytest.raises(BackendError, match=f"the {NAME} backend has no per-layer profiler"):
        get_backend(NAME).profile({"m": artifact})
    with pytest.raises(BackendError, match=f"the {NAME} backend cannot compute"):
        get_backend(NAME).intermediates(load_model(model), {"x": np.load(data)}, ["y"])


def test_a_recipe_names_a_registered_backend(registered, model_and_data, tmp_path, cli) -> None:
    model, data = model_and_data
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: reference\n"
        "prune: {criterion: [dead], round_to: 1}\n"
        f"build: {{backend: {NAME}, precision: fp32}}\n"
        "bench: {batches: [1], warmup: 1, iters: 2, repeats: 1}\n",
        encoding="utf-8",
    )
    ran = cli("run", recipe, "--model", model, "--calib", data, "-o", tmp_path / "run")
    assert ran.code == 0, ran.err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["target"]["backend"] == NAME and report["target"]["device"] == ReferenceBackend().device()
    assert report["validation"]["passed"] and report["layers"] is None  # no profiler: no per-layer table
    assert report["pruning"]["channels_removed"] > 0
    assert (tmp_path / "run" / "build" / "model.reference.onnx").is_file()


def test_unregistered_names_are_refused_everywhere(model_and_data, tmp_path, cli) -> None:
    model, data = model_and_data
    assert NAME not in backend_names()
    refused = cli("build", model, "--backend", NAME, "-o", tmp_path / "out")
    assert (
        refused.code == 2 and f"unknown backend '{NAME}'; choose one of onnxruntime, tensorrt" in refused.err
    )
    with pytest.raises(UsageError, match="unknown backend"):
        get_backend(NAME)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"build: {{backend: {NAME}}}\n", encoding="utf-8")
    ran = cli("run", recipe, "--model", model, "--calib", data, "-o", tmp_path / "run")
    assert ran.code == 2 and "'onnxruntime', 'tensorrt'" in ran.err


class BrokenBackend(ReferenceBackend):
    """Writes an artifact its own runner cannot load."""

    def _build_artifact(self, request: BuildRequest) -> Built:
        request.artifact.write_bytes(b"not a model")
        return Built([request.artifact])


def test_an_artifact_the_runtime_cannot_load_is_never_reported_built(model_and_data, tmp_path) -> None:
    model, _ = model_and_data
    with pytest.raises(DeploysparseError, match=r"model\.reference\.onnx"):
        BrokenBackend().build(model, tmp_path / "out")
    assert not (tmp_path / "out" / "model.reference.onnx.json").exists()  # no metadata for it either


def test_registration_refuses_a_silent_overwrite() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_backend("onnxruntime", ReferenceBackend)
    with pytest.raises(ValueError, match=r"package\.module:Attribute"):
        register_backend("lazy", "deploysparse.backends.onnxruntime.OnnxRuntimeBackend")
    register_backend("lazy", "deploysparse.backends.onnxruntime:OnnxRuntimeBackend")  # imported on first use
    try:
        cpu = get_backend("lazy", providers=["CPUExecutionProvider"])  # options go to the factory
        assert cpu.name == "onnxruntime" and cpu.providers() == ["CPUExecutionProvider"]
        register_backend("lazy", ReferenceBackend, replace=True)
        assert isinstance(get_backend("lazy"), ReferenceBackend)
    finally:
        unregister_backend("lazy")
    assert "lazy" not in backend_names()
