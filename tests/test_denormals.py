"""Denormal float32 weights: counted per tensor, flushed by prune and build unless asked not to, timed by analyze."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from deploysparse import api
from deploysparse.denormals import count_denormals, denormal_mask, flush_denormals, flushed_copy
from tests.exporting import run

TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32, 1.18e-38


def _plant(values: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Replace `fraction` of the entries by random denormals of either sign; return them and their count."""
    flat = values.reshape(-1).copy()
    chosen = rng.choice(flat.size, size=int(flat.size * fraction), replace=False)
    flat[chosen] = rng.uniform(0.01, 0.99, size=chosen.size).astype(np.float32) * TINY
    flat[chosen[::2]] *= -1
    return flat.reshape(values.shape), chosen.size


def denormal_model(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Conv(3->16) ReLU Conv(16->16, weight in a Constant node) ReLU GlobalAveragePool Flatten Gemm(16->5),
    with denormals planted in both conv weights (every filter keeps normal weights, so none is dead)."""
    w1, n1 = _plant(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), 0.3, rng)
    w2, n2 = _plant(rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.2, 0.2, rng)
    fc = rng.standard_normal((5, 16)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Constant",
            [],
            ["w2"],
            name="w2_const",
            value=helper.make_tensor("w2", onnx.TensorProto.FLOAT, w2.shape, w2.reshape(-1).tolist()),
        ),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "denormals",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
            numpy_helper.from_array(fc, "fc"),
            numpy_helper.from_array(np.zeros(5, np.float32) + 0.1, "fc_b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model, {"w1": n1, "w2": n2}


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    model, counts = denormal_model(np.random.default_rng(7))
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path, counts


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_mask_finds_exactly_the_subnormals() -> None:
    values = np.array([0.0, -0.0, TINY, -TINY, TINY / 2, -TINY / 3, 1e-45, 1.0, np.inf, np.nan], np.float32)
    assert denormal_mask(values).tolist() == [
        False,
        False,
        False,
        False,
        True,
        True,
        True,
        False,
        False,
        False,
    ]


def test_count_names_each_tensor_initializer_and_constant_node(planted) -> None:
    path, counts = planted
    found = count_denormals(onnx.load(path))
    assert found.tensors == counts  # w1 is an initializer (raw bytes), w2 a Constant node (float_data)
    assert found.total == sum(counts.values())
    assert "w2 " in found.describe() and f"{found.total:,} denormal" in found.describe()


def test_flush_zeroes_denormals_only_and_outputs_stay_within_float32_resolution(planted) -> None:
    path, counts = planted
    original = onnx.load(path)
    flushed, report = flushed_copy(original)
    assert report.tensors == counts
    assert count_denormals(original).tensors == counts  # the copy was flushed, not the original
    assert count_denormals(flushed).total == 0
    before = numpy_helper.to_array(original.graph.initializer[0])
    after = numpy_helper.to_array(flushed.graph.initializer[0])
    mask = denormal_mask(before)
    assert np.all(after[mask] == 0) and np.array_equal(after[~mask], before[~mask])
    x = np.random.default_rng(1).standard_normal((4, 3, 12, 12)).astype(np.float32)
    want, got = run(original, {"x": x})[0], run(flushed, {"x": x})[0]
    # A denormal term (< 1.2e-38 x |activation|) can change a float32 sum of normal terms only by
    # a rounding step: one ulp of the partial sums, far inside 1e-6 of the outputs' scale.
    assert np.abs(want - got).max() <= 1e-6 * np.abs(want).max()
    assert flush_denormals(flushed).total == 0  # idempotent


def test_prune_flushes_the_compact_model_unless_asked_not_to(planted) -> None:
    path, counts = planted
    result = api.prune(path, criterion="l1", ratio=0.25)
    flushed = result.summary["denormals_flushed"]
    assert flushed["total"] > 0 and set(flushed["tensors"]) <= set(counts)
    assert count_denormals(result.model).total == 0
    kept = api.prune(path, criterion="l1", ratio=0.25, keep_denormals=True)
    assert "denormals_flushed" not in kept.summary
    assert count_denormals(kept.model).total == flushed["total"]


def test_cli_prune_reports_the_flush_and_keeps_the_input(planted, cli, tmp_path: Path) -> None:
    path, counts = planted
    digest = _sha(path)
    out = tmp_path / "dead.onnx"
    result = cli("prune", path, "--criterion", "dead", "-o", out)
    assert result.code == 0, result.err
    printed = " ".join(result.out.split())  # the console wraps long lines
    assert (
        f"set to zero (--keep-denormals keeps them): {sum(counts.values()):,} denormal float32 weights in 2 tensors"
        in printed
    )
    assert count_denormals(onnx.load(out)).total == 0
    assert _sha(path) == digest
    kept = tmp_path / "kept.onnx"
    assert cli("prune", path, "--criterion", "dead", "-o", kept, "--keep-denormals").code == 0
    assert count_denormals(onnx.load(kept)).tensors == counts


def test_build_flushes_the_artifact_not_the_input(planted, cli, tmp_path: Path) -> None:
    path, counts = planted
    digest = _sha(path)
    result = cli("build", path, "-o", tmp_path / "b", "--json")
    assert result.code == 0, result.err
    built = json.loads(result.out)
    assert built["metadata"]["denormals_flushed"] == sum(counts.values())
    assert built["metadata"]["source_model"] == str(path)
    assert count_denormals(onnx.load(built["artifact"])).total == 0
    assert _sha(path) == digest
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "model.optimized.onnx",
        "model.optimized.onnx.json",
    ]
    kept = json.loads(cli("build", path, "-o", tmp_path / "k", "--json", "--keep-denormals").out)
    assert kept["metadata"]["denormals_flushed"] == 0
    assert count_denormals(onnx.load(kept["artifact"])).total > 0


def test_analyze_reports_denormals_and_times_them_side_by_side(planted, cli) -> None:
    path, counts = planted
    result = cli("analyze", path, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)["denormals"]
    assert report["tensors"] == counts and report["total"] == sum(counts.values())
    latency = report["latency"]
    assert latency["runs"] >= 10 and latency["as_is_ms"] > 0 and latency["flushed_ms"] > 0
    assert latency["slowdown"] == pytest.approx(latency["as_is_ms"] / latency["flushed_ms"])
    text = cli("analyze", path).out
    assert "denormal float32 weights in 2 tensors" in text and "ms flushed" in text


def test_analyze_of_a_clean_model_times_nothing(planted, tmp_path: Path) -> None:
    path, _ = planted
    clean, _ = flushed_copy(onnx.load(path))
    analysis = api.analyze(clean)
    assert analysis.denormals.total == 0 and analysis.denormal_cost is None
    assert analysis.to_json()["denormals"] == {"total": 0, "tensors": {}, "folded": 0, "latency": None}


def test_the_bundled_digits_model_carries_the_denormals_the_issue_names() -> None:
    torch = pytest.importorskip("torch")
    from deploysparse.zoo.digits import BUNDLED_WEIGHTS

    state = torch.load(BUNDLED_WEIGHTS, weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    convs = [name for name, t in state.items() if t.dim() == 4]
    counts = [int(denormal_mask(state[name].numpy()).sum()) for name in convs]
    assert counts[4] == 13_181 and counts[5] == 34_680  # the fifth and sixth conv


def test_run_reports_the_originals_denormals_and_times_its_flushed_copy(planted, tmp_path: Path) -> None:
    """`run` reads the denormal count and the flushed copy from the one original it loaded: both
    must still reach the report (count per tensor, flushed copy timed and profiled beside it)."""
    from deploysparse.pipeline import RunInputs, run_recipe
    from deploysparse.recipe import load_recipe

    path, counts = planted
    digest = _sha(path)
    data = tmp_path / "data.npy"
    np.save(data, np.random.default_rng(3).standard_normal((8, 3, 12, 12)).astype(np.float32))
    recipe = load_recipe("x86-cpu-onnxruntime")
    recipe = recipe.model_copy(
        update={
            "bench": recipe.bench.model_copy(update={"batches": [1], "iters": 3, "warmup": 1, "repeats": 1}),
            "prune": recipe.prune.model_copy(update={"round_to": 1}),
        }
    )
    report = run_recipe(recipe, RunInputs(model=str(path), calib=str(data)), tmp_path / "out")

    assert report["extra"]["denormals"]["original"] == {
        "total": sum(counts.values()),
        "tensors": counts,
        "folded": 0,
    }
    assert report["extra"]["denormals"]["flushed_by_prune"]["total"] == sum(counts.values())
    assert [p["batch"] for p in report["latency"]["original_flushed"]] == [1]
    assert report["layers"]["models"] == ["original", "original_flushed", "compact"]
    assert _sha(path) == digest


def conv_bn_model(rng: np.random.Generator, dead: int, consumers: int = 1) -> onnx.ModelProto:
    """Conv(3->8) BatchNormalization ReLU, with `dead` filters as Adam + L2 leaves them: weights small
    but normal (~1e-30) and a BN scale of ~1e-10, so the weight a backend folds, W x gamma /
    sqrt(var + eps), is ~1e-40: subnormal. With consumers=2 the conv output also feeds an Add, so no
    backend folds the BN into it."""
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w[:dead] *= np.float32(1e-30)
    gamma = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    gamma[:dead] = rng.uniform(0.5, 1.5, dead).astype(np.float32) * np.float32(1e-10)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn", epsilon=1e-5),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
    ]
    if consumers == 2:
        nodes.append(helper.make_node("Add", ["r", "c"], ["y"], name="add"))
    else:
        nodes.append(helper.make_node("Identity", ["r"], ["y"], name="out"))
    graph = helper.make_graph(
        nodes,
        "conv_bn",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 10, 10])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8, 10, 10])],
        initializer=[
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(gamma, "g"),
            numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
            numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "m"),
            numpy_helper.from_array(rng.uniform(0.5, 2.0, 8).astype(np.float32), "v"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def ort_fused(model: onnx.ModelProto, tmp_path: Path) -> onnx.ModelProto:
    """The graph ONNX Runtime runs after its basic optimisations (Conv + BatchNormalization fused)."""
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath)


def test_weights_that_turn_denormal_when_the_backend_folds_the_bn_are_counted_and_flushed(
    tmp_path: Path,
) -> None:
    model = conv_bn_model(np.random.default_rng(11), dead=3)
    assert not denormal_mask(numpy_helper.to_array(model.graph.initializer[0])).any()  # stored: all normal
    found = count_denormals(model)
    assert found.tensors == {"w": 3 * 27} and found.folded == 3 * 27
    assert "81 of them once BatchNorm is folded" in found.describe()
    # What ONNX Runtime actually runs: its fused weights hold exactly those denormals, and none once
    # they are flushed.
    assert count_denormals(ort_fused(model, tmp_path)).total == 3 * 27
    flushed, report = flushed_copy(model)
    assert report.tensors == {"w": 81} and report.folded == 81
    assert count_denormals(ort_fused(flushed, tmp_path)).total == 0
    assert count_denormals(flushed).total == 0
    x = np.random.default_rng(2).standard_normal((4, 3, 10, 10)).astype(np.float32)
    want, got = run(model, {"x": x})[0], run(flushed, {"x": x})[0]
    # Each flushed term is below 1.2e-38 x |activation| next to the BN's normal shift: the same
    # rounding-step bound as for stored denormals.
    assert np.abs(want - got).max() <= 1e-6 * np.abs(want).max()


def test_a_bn_no_backend_folds_leaves_the_weights_as_stored(tmp_path: Path) -> None:
    model = conv_bn_model(np.random.default_rng(11), dead=3, consumers=2)  # the conv output feeds an Add too
    assert count_denormals(model).total == 0
    assert count_denormals(ort_fused(model, tmp_path)).total == 0  # ONNX Runtime did not fold it either


def test_the_bundled_digits_model_runs_no_denormal_weight_once_flushed(tmp_path: Path) -> None:
    """Exported as `deploysparse demo` does (BN kept): 4,418 weights are normal as stored and denormal
    once ONNX Runtime folds the BN (4,170 in the fifth conv, whose BN scale falls to 3.8e-10)."""
    torch = pytest.importorskip("torch")
    from deploysparse.frontend.torch_export import export_onnx
    from deploysparse.zoo.digits import INPUT_SHAPE, digits_model

    export_onnx(digits_model(), torch.randn(*INPUT_SHAPE), tmp_path / "digits.onnx")
    model = onnx.load(tmp_path / "digits.onnx")
    found = count_denormals(model)
    assert found.folded == 4_418 and found.tensors["0.14.weight"] == 13_181 + 4_170
    assert count_denormals(ort_fused(model, tmp_path)).total > 0
    flushed, _ = flushed_copy(model)
    assert count_denormals(ort_fused(flushed, tmp_path)).total == 0
