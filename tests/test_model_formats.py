"""Models come in many spellings of the same function; dead-channel pruning must be exact on each.

Weights as Constant nodes, weights in external data (read and written back that way), hardswish
written out as x * Clip(x + 3, 0, 6) / 6 or x * HardSigmoid(x), symbolic H and W, and opsets from
11 to 21 (each exporter writes Clip, Split, ReduceMean and Resize differently across them).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from deploysparse import api
from deploysparse.graph.analysis import analyze_graph
from deploysparse.graph.masking import zero_channels
from deploysparse.graph.surgery import rewrite_graph
from deploysparse.modelio import save_model
from tests.archs import ARCHS
from tests.archs.onnxgraphs import dead_convnet, random_convnet
from tests.archs.plans import random_plan
from tests.exporting import export, random_feeds, relative_error, run, weight_count

OPSETS = (11, 13, 17, 21)


def assert_same_outputs(
    reference: Path | onnx.ModelProto, other: Path | onnx.ModelProto, feeds: dict
) -> None:
    for i, (a, b) in enumerate(zip(run(reference, feeds), run(other, feeds), strict=True)):
        assert a.shape == b.shape
        err = relative_error(a, b)
        assert err < 1e-5, f"output {i}: relative error {err:.3g}"


def prune_and_check(path: Path, tmp_path: Path, expect_removed: int | None = None, batch: int = 3) -> Path:
    """Prune dead channels, save, and check the compact model is valid, smaller and exact."""
    result = api.prune(str(path), criterion="dead", round_to=1)
    out = save_model(result.model, tmp_path / "compact.onnx")
    onnx.checker.check_model(str(out), full_check=True)
    removed = result.summary["channels_removed"]
    if expect_removed is None:
        assert removed > 0, result.summary
    else:
        assert removed == expect_removed, result.summary
    assert weight_count(onnx.load(str(out))) < weight_count(onnx.load(str(path)))
    assert_same_outputs(path, out, random_feeds(path, np.random.default_rng(11), batch=batch))
    return out


def initializers_to_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every initializer turned into a Constant node at the top of the graph."""
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    constants = [
        helper.make_node(
            "Constant",
            [],
            [init.name],
            name=f"const_{i}",
            value=numpy_helper.from_array(numpy_helper.to_array(init), init.name),
        )
        for i, init in enumerate(graph.initializer)
    ]
    names = {init.name for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in names]
    nodes = [*constants, *graph.node]
    del graph.initializer[:], graph.node[:], graph.input[:]
    graph.node.extend(nodes)
    graph.input.extend(inputs)
    return converted


@pytest.mark.parametrize("source", ["helper", "legacy-mobilenet_v2"])
def test_weights_as_constant_nodes(exported, tmp_path: Path, source: str) -> None:
    model = dead_convnet() if source == "helper" else onnx.load(str(exported("mobilenet_v2", "legacy")))
    converted = initializers_to_constants(model)
    assert not converted.graph.initializer
    onnx.checker.check_model(converted, full_check=True)
    path = tmp_path / "constants.onnx"
    onnx.save(converted, str(path))
    prune_and_check(path, tmp_path, expect_removed=4 if source == "helper" else None)


def test_external_data_read_and_written_back(
    exported, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dynamo export keeps weights in model.onnx.data; the compact model does too. The model path
    is relative and the working folder is elsewhere, so the data must be found beside the model."""
    source = exported("resnet_basic", "dynamo")
    models = tmp_path / "models"
    models.mkdir()
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copy(source.with_name(name), models / name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = cli("prune", "../models/model.onnx", "--criterion", "dead", "-o", "out/compact.onnx")
    assert result.code == 0, result.err
    out = work / "out" / "compact.onnx"
    assert out.with_name("compact.onnx.data").exists()
    header = onnx.load(str(out), load_external_data=False)
    assert any(init.data_location == onnx.TensorProto.EXTERNAL for init in header.graph.initializer)
    onnx.checker.check_model(str(out), full_check=True)
    assert_same_outputs(source, out, random_feeds(source, np.random.default_rng(5), batch=2))


def test_inline_model_stays_inline(exported, tmp_path: Path, cli) -> None:
    source = exported("resnet_basic", "legacy")
    out = tmp_path / "compact.onnx"
    result = cli("prune", source, "--criterion", "dead", "-o", out)
    assert result.code == 0, result.err
    assert not (tmp_path / "compact.onnx.data").exists()
    assert_same_outputs(source, out, random_feeds(source, np.random.default_rng(6), batch=2))


@pytest.mark.parametrize("act", ["hardswish_clip", "hardswish_hardsigmoid"])
@pytest.mark.parametrize("opset", [11, 17])
def test_hardswish_written_out(tmp_path: Path, act: str, opset: int) -> None:
    """hardswish(-4) = 0 however it is spelled, so the 4 planted channels are dead and removable even
    though a padded 3x3 conv reads them."""
    path = tmp_path / "model.onnx"
    onnx.save(dead_convnet(act=act, opset=opset), str(path))
    prune_and_check(path, tmp_path, expect_removed=4)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("arch", ["resnet_basic", "unet_nearest", "mobilenet_v2"])
def test_dynamic_spatial_dims(tmp_path: Path, cli, arch: str, exporter: str) -> None:
    """Batch, H and W all symbolic. Without shapes the CLI may ask for them (one-line error naming
    the input and --input-shape); with --input-shape the compact model keeps H and W symbolic and
    matches the original at sizes other than the one analyzed."""
    spec = ARCHS[arch]
    path = export(
        spec.planted(), spec.example(2), tmp_path / "src" / "model.onnx", exporter, dynamic_spatial=True
    )
    dims = [
        d.dim_param or d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    ]
    assert isinstance(dims[2], str) and isinstance(dims[3], str), dims

    out = tmp_path / "compact.onnx"
    without = cli("prune", path, "--criterion", "dead", "-o", out, "--round-to", "1")
    if without.code != 0:
        assert without.code == 2 and "input" in without.err and "--input-shape" in without.err, without.err
        assert not out.exists()
    result = cli(
        "prune", path, "--criterion", "dead", "--input-shape", "input:2x3x16x16", "-o", out, "--round-to", "1"
    )
    assert result.code == 0, result.err
    compact_dims = [
        d.dim_param or d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    ]
    assert [isinstance(d, str) for d in compact_dims] == [isinstance(d, str) for d in dims]
    assert weight_count(onnx.load(str(out))) < weight_count(onnx.load(str(path)))
    rng = np.random.default_rng(spec.seed)
    for hw in (16, 24, 32):
        feeds = {"input": rng.standard_normal((3, 3, hw, hw)).astype(np.float32)}
        assert_same_outputs(path, out, feeds)


EXPORTED_OPSETS = [
    ("mobilenet_v2", "legacy", 11),
    ("se_hardswish", "legacy", 11),
    ("se_hardswish", "legacy", 13),
    ("unet_bilinear", "legacy", 13),
    ("densenet", "legacy", 17),
    ("mobilenet_v2", "dynamo", 21),
    ("unet_bilinear", "dynamo", 21),
]


@pytest.mark.parametrize(("arch", "exporter", "opset"), EXPORTED_OPSETS)
def test_exported_at_opset(tmp_path: Path, arch: str, exporter: str, opset: int) -> None:
    """Legacy exports at opset 11 and 13 write hardswish as x * HardSigmoid(x) and Clip bounds as
    Constant nodes; the dynamo exporter at 21 uses the newest op versions."""
    spec = ARCHS[arch]
    path = export(spec.planted(), spec.example(2), tmp_path / "src" / "model.onnx", exporter, opset=opset)
    out = prune_and_check(path, tmp_path)
    versions = {o.domain or "ai.onnx": o.version for o in onnx.load(str(out)).opset_import}
    assert versions.get("ai.onnx") == opset


@pytest.mark.parametrize("opset", OPSETS)
def test_helper_graphs_at_opset(tmp_path: Path, opset: int) -> None:
    """Dead pruning on a hand-built graph, and a random plan on a graph with every supported block
    (Split sizes as attribute, input or num_outputs; Clip bounds as inputs), at each opset."""
    path = tmp_path / "dead.onnx"
    onnx.save(dead_convnet(opset=opset), str(path))
    prune_and_check(path, tmp_path, expect_removed=4)

    blocks = ["conv", "residual", "split", "dense", "pool", "mul", "concat", "slice", "depthwise"]
    model = random_convnet(blocks, "gap_gemm", seed=opset, opset=opset)
    ga = analyze_graph(model)
    plan = random_plan(ga, np.random.default_rng(opset))
    compact = rewrite_graph(ga, plan).model
    assert next(o.version for o in compact.opset_import if o.domain in ("", "ai.onnx")) == opset
    onnx.checker.check_model(compact, full_check=True)
    assert_same_outputs(zero_channels(ga, plan), compact, random_feeds(model, np.random.default_rng(opset)))
