"""Per-layer latency from ONNX Runtime's profiler: one row per node, original beside compact by node name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from deploysparse import api
from deploysparse.backends import get_backend
from deploysparse.modelio import save_model
from deploysparse.profiling import profile_layers, side_by_side_rows
from tests.test_denormals import denormal_model


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    model, _ = denormal_model(np.random.default_rng(3))
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def test_every_compute_node_gets_a_time_and_shares_add_up(model_path: Path) -> None:
    profile = profile_layers(model_path, batch=2, warmup=2, runs=5)
    ops = {t.op for t in profile.layers}
    # rows are named after the source nodes, whatever layout ONNX Runtime chose for them
    assert {"conv1", "conv2", "fc"} <= {t.node for t in profile.layers}
    assert ops & {"Conv", "FusedConv"} and "Gemm" in ops
    assert all(t.ms > 0 for t in profile.layers)
    assert sum(t.share for t in profile.layers) == pytest.approx(1.0)
    assert profile.total_ms == pytest.approx(sum(t.ms for t in profile.layers))
    assert [t.ms for t in profile.layers] == sorted((t.ms for t in profile.layers), reverse=True)
    assert profile.to_json()["layers"][0]["node"] == profile.layers[0].node


def test_original_and_compact_line_up_by_node_name(model_path: Path, tmp_path: Path) -> None:
    compact = save_model(api.prune(model_path, criterion="l1", ratio=0.3).model, tmp_path / "compact.onnx")
    models = {"original": model_path, "compact": compact}
    profiles = get_backend("onnxruntime").profile(models, batch=4, warmup=1, runs=3)
    rows = side_by_side_rows(profiles)
    assert {r["node"] for r in rows} == {t.node for t in profiles["original"].layers} | {
        t.node for t in profiles["compact"].layers
    }
    both = {r["node"] for r in rows if set(r["ms"]) == {"original", "compact"}}
    assert {"conv1", "conv2", "fc"} <= both  # pruned to odd widths, still the same rows
    firsts = [r["ms"].get("original", 0.0) for r in rows]
    assert firsts == sorted(firsts, reverse=True)


def test_bench_per_layer_cli(model_path: Path, cli) -> None:
    result = cli(
        "bench", model_path, "--batch", "1,3", "--iters", "3", "--warmup", "1", "--per-layer", "--json"
    )
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert [p["batch"] for p in data["per_layer"]] == [1, 3]
    assert all(p["runs"] == 3 and p["layers"] for p in data["per_layer"])
    text = cli("bench", model_path, "--iters", "3", "--per-layer", "--top", "2")
    assert text.code == 0 and "per layer, batch 1" in text.out and "more nodes; --top 0 shows all" in text.out


def test_per_layer_needs_onnxruntime(model_path: Path, cli) -> None:
    result = cli("bench", model_path, "--backend", "tensorrt", "--per-layer")
    assert result.code == 2
    assert result.err.strip() == (
        "error: --per-layer needs a backend with a per-layer profiler, and tensorrt has none; "
        "use --backend onnxruntime"
    )


def test_static_batch_is_refused_with_the_input_named(tmp_path: Path) -> None:
    model, _ = denormal_model(np.random.default_rng(0))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    path = tmp_path / "static.onnx"
    onnx.save(model, path)
    from deploysparse.errors import UsageError

    with pytest.raises(UsageError, match="input 'x' has a static batch of 1, so batch 4 cannot run"):
        profile_layers(path, batch=4, warmup=0, runs=1)
