"""Channels off axis 1: ConvNeXt-, ViT- and Swin-shaped nets (NHWC maps, tokens), from both exporters.

The channel identity follows a Transpose to its new axis; LayerNorm over the channels (the op, or
written out below opset 17) slices its scale and shift; a MatMul on an N-D activation reads and
writes features on the last axis; a bias or layer scale on the last axis is sliced with them. Any
legal plan must give the masked original (which takes a LayerNorm's statistics over the kept
channels, as the compact model does). Removing a channel that enters a LayerNorm changes every
other channel's output: dead filters never do it, criteria may, and the change is measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from deploysparse import api
from deploysparse.graph.analysis import analyze_graph
from deploysparse.graph.masking import zero_channels
from deploysparse.graph.surgery import rewrite_graph
from deploysparse.modelio import load_model, save_model
from tests.archs import TOKEN_ARCHS
from tests.archs.plans import assert_random_plans_match_masked, random_plan
from tests.exporting import export, random_feeds, relative_error, run

# float32 LayerNorm, GELU and sums of at most a few hundred terms, relative to the output's scale
TOLERANCE = 1e-5
CASES = [
    pytest.param(arch, exporter, False, None, id=f"{arch}-{exporter}")
    for arch in TOKEN_ARCHS
    for exporter in ("dynamo", "legacy")
] + [
    # Below opset 17 torch writes LayerNorm out: ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add.
    pytest.param("convnext", "legacy", False, 14, id="convnext-legacy-opset14"),
    pytest.param("swin", "legacy", False, 14, id="swin-legacy-opset14"),
    # Exporter optimisations off: the Linear weights reach the graph as Transpose(weight) nodes.
    pytest.param("convnext", "dynamo", True, None, id="convnext-dynamo-bn"),
    pytest.param("convnext", "legacy", True, None, id="convnext-legacy-bn"),
]
# MLP hidden widths (groups whose only producers are MatMuls) every export must leave prunable.
HIDDEN = {"convnext": 3, "vit": 2, "swin": 2}
# The first Linear of every MLP (its output goes through GELU, so a zero row and bias is a dead channel).
MLP_INPUTS = {
    "convnext": ["stage1.0.block.3", "stage1.1.block.3", "stage2.pwconv1"],
    "vit": ["layers.0.mlp.0", "layers.1.mlp.0"],
    "swin": ["features.1.mlp.0", "features.3.mlp.0"],
}


def _hidden_groups(ga) -> list:
    """Prunable groups made by MatMuls alone, wider than any stream (Swin's patch merging writes one
    of 16 channels with its MatMul alone)."""
    return [g for g in ga.prunable_groups if {m.op for m in g.producers} == {"MatMul"} and g.size > 16]


@pytest.mark.parametrize(("arch", "exporter", "keep_bn", "opset"), CASES)
def test_random_plan_matches_masked_original(
    exported, arch: str, exporter: str, keep_bn: bool, opset: int | None
) -> None:
    ga = analyze_graph(load_model(exported(arch, exporter, keep_bn, opset)))
    assert len(_hidden_groups(ga)) == HIDDEN[arch], [(g.id, g.label) for g in ga.prunable_groups]
    if arch == "vit":  # attention's head split is pinned, and says so; its MLPs stay prunable
        assert any(p.op == "Reshape" and "attention heads" in p.reason for p in ga.pinned)
    else:  # the stem's stream passes Transposes and LayerNorms
        stream = next(g for g in ga.prunable_groups if {"Conv", "MatMul"} <= {m.op for m in g.producers})
        assert opset or any(m.op == "LayerNormalization" for m in stream.params)
    assert_random_plans_match_masked(ga, TOKEN_ARCHS[arch].seed, tolerance=TOLERANCE)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("arch", list(TOKEN_ARCHS))
def test_dead_mlp_channels_are_removed_exactly(tmp_path: Path, arch: str, exporter: str) -> None:
    """An MLP's first Linear with zero rows and bias: GELU(0) = 0, so the second Linear reads 0 there."""
    spec = TOKEN_ARCHS[arch]
    model = spec.build()
    planted = 0
    with torch.no_grad():
        for name in MLP_INPUTS[arch]:
            linear = model.get_submodule(name)
            dead = np.random.default_rng(spec.seed).choice(linear.out_features, 3, replace=False)
            linear.weight[dead] = 0.0
            linear.bias[dead] = 0.0
            planted += len(dead)
    path = export(model, spec.example(2), tmp_path / "src" / "model.onnx", exporter)
    result = api.prune(str(path), criterion="dead", round_to=1)
    assert result.summary["channels_removed"] == planted, [
        g for g in result.summary["groups"] if g["removed"]
    ]
    assert result.summary["exact"]
    out = save_model(result.model, tmp_path / "compact.onnx")
    feeds = random_feeds(path, np.random.default_rng(spec.seed), batch=3)
    for a, b in zip(run(path, feeds), run(out, feeds), strict=True):
        assert relative_error(a, b) < TOLERANCE


@pytest.mark.parametrize("arch", list(TOKEN_ARCHS))
def test_l1_prunes_through_layernorms_and_measures_the_change(exported, arch: str) -> None:
    result = api.prune(str(exported(arch, "legacy")), criterion="l1", ratio=0.3, round_to=1)
    summary = result.summary
    assert summary["channels_removed"] > 0 and summary["flops_after"] < summary["flops_before"]
    assert not summary["exact"]
    assert summary["output_change"]["max_rel"] > 0  # a LayerNorm's statistics changed: measured, not claimed
    feeds = random_feeds(result.graph.model, np.random.default_rng(0), batch=2)
    assert run(result.model, feeds)[0].shape == run(result.graph.model, feeds)[0].shape


def _gated_model(dead: int) -> onnx.ModelProto:
    """conv0 (3->4, channel `dead` a zero filter with bias -4: 0 after Relu) -> x; a 1x1 conv reads x,
    and a spatial gate from x's channel mean (ReduceMean over axis 1, CBAM's spatial attention)
    multiplies the conv's output."""
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) / 5
    b0 = rng.normal(0, 0.5, 4).astype(np.float32)
    w0[dead], b0[dead] = 0.0, -4.0
    w1 = rng.standard_normal((5, 4, 1, 1)).astype(np.float32) / 2
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w1"], ["c"], name="conv1"),
        helper.make_node("ReduceMean", ["r"], ["m"], name="channel_mean", axes=[1], keepdims=1),
        helper.make_node("Sigmoid", ["m"], ["g"], name="gate"),
        helper.make_node("Mul", ["c", "g"], ["y"], name="gated"),
    ]
    graph = helper.make_graph(
        nodes,
        "gated",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5, 6, 6])],
        [numpy_helper.from_array(v, n) for n, v in [("w0", w0), ("b0", b0), ("w1", w1)]],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_constant_channel_in_a_channel_statistic_is_not_dead() -> None:
    """Channel 2 is 0 wherever a conv reads it, but the channel mean counts it: removing it changes the
    gate, so `dead` keeps it and says why; a criterion may remove it, and the masked original (the mean
    over the kept channels) is what the compact model computes."""
    model = _gated_model(dead=2)
    result = api.prune(model, criterion="dead", round_to=1)
    assert result.summary["channels_removed"] == 0
    assert any("channel_mean takes a statistic over the channels" in w for w in result.summary["warnings"])

    ga = analyze_graph(model)
    (group,) = ga.prunable_groups
    plan = random_plan(ga, np.random.default_rng(4))
    compact = rewrite_graph(ga, plan).model
    feeds = random_feeds(model, np.random.default_rng(5))
    assert relative_error(run(zero_channels(ga, plan), feeds)[0], run(compact, feeds)[0]) < TOLERANCE
    assert relative_error(run(model, feeds)[0], run(compact, feeds)[0]) > 1e-4  # the mean moved
    assert group.size == 4


def _one_node(node: onnx.NodeProto, shape: list[int], weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """conv (3 -> shape's channels, 1x1) -> `node` reading "a" and writing "y" -> output."""
    rng = np.random.default_rng(0)
    weights = {"w0": rng.standard_normal((4, 3, 1, 1)).astype(np.float32), **weights}
    conv = helper.make_node("Conv", ["x", "w0"], ["a"], name="conv0")
    graph = helper.make_graph(
        [conv, node],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, n) for n, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


PIN_CASES = [
    (
        helper.make_node("Transpose", ["a"], ["y"], name="n", perm=[1, 0, 2, 3]),
        {},
        "transpose moves the channel axis to the batch axis",
    ),
    (
        helper.make_node("LayerNormalization", ["a", "s"], ["y"], name="n", axis=1),
        {"s": np.ones((4, 5, 5), np.float32)},
        "normalises over the channels together with other axes",
    ),
    (
        helper.make_node("MatMul", ["a", "m"], ["y"], name="n"),
        {"m": np.ones((5, 2), np.float32)},
        "the matrix product reads the last axis, which does not hold this tensor's channels",
    ),
    (
        helper.make_node("Einsum", ["a"], ["y"], name="n", equation="nchw->nhwc"),
        {},
        "no channel rule for Einsum",
    ),
]


@pytest.mark.parametrize(("node", "weights", "reason"), PIN_CASES, ids=[c[0].op_type for c in PIN_CASES])
def test_what_no_rule_follows_is_pinned_with_its_reason(node, weights, reason: str) -> None:
    ga = analyze_graph(_one_node(node, [1, 3, 5, 5], weights))
    assert (node.op_type, reason) in {(p.op, p.reason) for p in ga.pinned}


def test_an_op_without_an_axis_rule_is_pinned_when_the_channels_moved() -> None:
    """MaxPool pools axes 2 and 3 of NCHW: reading an NHWC tensor it would mix the channels."""
    transpose = helper.make_node("Transpose", ["a"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1])
    pool = helper.make_node("MaxPool", ["t"], ["y"], name="pool", kernel_shape=[2, 2])
    model = _one_node(transpose, [1, 3, 5, 5], {})
    model.graph.node.append(pool)
    ga = analyze_graph(model)
    assert ("MaxPool", "reads channels on axis 3; its rule follows axis 1 only") in {
        (p.op, p.reason) for p in ga.pinned
    }


def test_reading_a_shape_pins_nothing_wherever_the_channels_lie() -> None:
    """Exporters read `x.shape` of NHWC maps and tokens (Swin's padding, ViT's class token): no channel
    value is read, so a Shape node pins nothing."""
    transpose = helper.make_node("Transpose", ["a"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1])
    model = _one_node(transpose, [1, 3, 5, 5], {})
    model.graph.node.append(helper.make_node("Shape", ["t"], ["s"], name="shape"))
    model.graph.output.append(helper.make_tensor_value_info("s", TensorProto.INT64, [4]))
    ga = analyze_graph(model)
    assert "Shape" not in {p.op for p in ga.pinned}


def test_tokens_reshaped_back_to_a_map_and_added_to_a_conv_branch_pin_the_branch() -> None:
    """PP-OCRv6's recogniser (SVTR): tokens [N, W, C] become [N, 1, W, C] by a Reshape (channels on
    axis 2, pinned) and NCHW by a Transpose, then are added to a conv branch. The Reshape's output has
    no channels it can follow, so the Add must pin the conv branch's channels: pruning them alone
    wrote an Add of 4 and 3 channels that ONNX Runtime refuses to load."""
    rng = np.random.default_rng(0)
    weights = {
        "w0": rng.standard_normal((4, 3, 1, 1)).astype(np.float32),
        "w1": rng.standard_normal((4, 4, 1, 3)).astype(np.float32),
        "m": rng.standard_normal((4, 4)).astype(np.float32),
        "flat": np.array([0, 4, 10], np.int64),
        "unflat": np.array([0, 1, 10, 4], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], name="conv0"),
        helper.make_node("Conv", ["a", "w1"], ["b"], name="conv1", pads=[0, 1, 0, 1]),
        helper.make_node("Reshape", ["a", "flat"], ["f"], name="flatten"),
        helper.make_node("Transpose", ["f"], ["tokens"], name="to_tokens", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["tokens", "m"], ["mixed"], name="linear"),
        helper.make_node("Reshape", ["mixed", "unflat"], ["nhwc"], name="unflatten"),
        helper.make_node("Transpose", ["nhwc"], ["back"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Add", ["back", "b"], ["y"], name="shortcut"),
    ]
    graph = helper.make_graph(
        nodes,
        "svtr",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 1, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, n) for n, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    ga = analyze_graph(model)
    assert ("Add", "operands keep their channels on different axes") in {(p.op, p.reason) for p in ga.pinned}
    assert [g.producers[0].node for g in ga.prunable_groups] == ["conv0"]
    assert_random_plans_match_masked(ga, base_seed=22)
