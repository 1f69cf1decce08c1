"""What the rest of the package asks the op rules instead of naming op types: what layer a node times
like (the latency table), which ops a backend fuses into their producer (the per-layer profile),
which weight takes a following normalisation's scale (the denormal count), which nodes add depth and
merge residuals (the depth advisor). Each part is checked on the built-in ops and on a custom-domain
op registered from outside the package, which the latency table, the profile, the denormal fold and
the depth advisor then see as they see the built-in ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploysparse.backends.feeds import make_feeds
from deploysparse.backends.onnxruntime.profiler import _labeller
from deploysparse.denormals import bn_fold_scales, count_denormals
from deploysparse.depth_advisor import drop_blocks, find_residual_blocks
from deploysparse.graph.analysis import analyze_graph
from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.rules import (
    RULES,
    LayerShape,
    kernel_node,
    register_rule,
    rule_for,
    runs_int8,
    unregister_rule,
)
from deploysparse.latency import LatencyModel, LatencyTable
from deploysparse.validate import detect_precision
from tests.exporting import run
from tests.test_denormals import ort_fused
from tests.test_graph_rules import _scale

DOMAIN = "my.ops"


def _model(
    nodes: list[onnx.NodeProto],
    arrays: dict[str, np.ndarray],
    x_shape: list,
    y_shape: list | None,
    functions: list[onnx.FunctionProto] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "parts",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v, n) for n, v in arrays.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
        functions=list(functions),
    )
    model.ir_version = 8
    return model


def _timed(model: onnx.ModelProto) -> dict[str, LayerShape | None]:
    ga = analyze_graph(model)
    return {
        n.name: rule_for(n).timed_layer(n, ga.table) if rule_for(n) else None for n in ga.model.graph.node
    }


# ---- timing: what layer a node times like ------------------------------------------------------------


def test_layer_shapes_keep_the_cache_keys_of_existing_tables() -> None:
    """LatencyTable caches are keyed by LayerShape.key: a changed form would re-time every table."""
    conv = LayerShape("conv", 8, 16, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False, (8, 8), 2)
    assert conv.key(4, 16) == '["conv", 4, 16, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], false, [8, 8], 2]'
    assert LayerShape("dense", 64, 10).key(32, 10) == '["dense", 32, 10, [], [], [], [], false, [], 1]'


def test_built_in_rules_say_what_each_layer_times_like() -> None:
    """Conv (ungrouped or depthwise, not SAME-padded), Gemm on a 2-D input and a 2-D MatMul are timed;
    a grouped conv, a SAME-padded one and a layer without weights are not."""
    rng = np.random.default_rng(0)
    arrays = {
        "w0": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "w1": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
        "w2": rng.standard_normal((8, 4, 1, 1)).astype(np.float32),
        "w3": rng.standard_normal((8, 8, 3, 3)).astype(np.float32),
        "wg": rng.standard_normal((5, 8 * 4 * 4)).astype(np.float32),
        "wm": rng.standard_normal((5, 6)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Conv", ["a", "w1"], ["b"], name="depthwise", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["b", "w2"], ["c"], name="grouped", group=2),
        helper.make_node("Conv", ["c", "w3"], ["d"], name="same", auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["d"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wg"], ["g"], name="gemm", transB=1),
        helper.make_node("MatMul", ["g", "wm"], ["y"], name="matmul"),
    ]
    timed = _timed(_model(nodes, arrays, [1, 3, 8, 8], [1, 6]))
    assert timed == {
        "conv": LayerShape("conv", 3, 8, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False, (8, 8)),
        "depthwise": LayerShape("conv", 8, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), True, (4, 4)),
        "grouped": None,
        "same": None,
        "relu": None,
        "flat": None,
        "gemm": LayerShape("dense", 128, 5),
        "matmul": LayerShape("dense", 5, 6),
    }


@pytest.mark.parametrize(
    "shape",
    [
        LayerShape("conv", 6, 10, (3, 3), (2, 1), (1, 0, 1, 0), (1, 2), False, (9, 8), 2),
        LayerShape("conv", 6, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), True, (5, 5), 3),
        LayerShape("dense", 12, 7, batch=2),
    ],
    ids=["conv", "depthwise", "dense"],
)
def test_one_node_layer_models_run_at_the_shapes_they_declare(shape: LayerShape) -> None:
    """The table feeds `in_shape` and sizes the null model's constant by `out_shape`: both must be
    what ONNX Runtime computes, for the layer and for its null model, at a narrower width too."""
    for c_in, c_out in [(shape.in_channels, shape.out_channels), (4, 4)]:
        x = np.random.default_rng(1).standard_normal(shape.in_shape(c_in)).astype(np.float32)
        (y,) = run(shape.model(c_in, c_out), {"x": x})
        assert list(y.shape) == shape.out_shape(c_in, c_out)
        y_null, x_out = run(shape.model(c_in, c_out, null=True), {"x": x})
        assert list(y_null.shape) == list(y.shape) and np.array_equal(x_out, x)


class CountingTimer:
    """A stand-in for a backend's Timer: it runs each one-node model once (on inputs made for its
    declared shapes) and answers with the layer's weight count as its 'milliseconds' (0 for a null
    model), so the table's grid is known without timing anything."""

    name, batch = "counting", 2

    def __init__(self) -> None:
        self.timed: list[list[int]] = []

    def fastest_ms(self, model: onnx.ModelProto, feeds=None, shapes=None) -> float:
        run(model, make_feeds(model))
        weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "w"]
        if weights:
            self.timed.append(list(weights[0].shape))
        return float(weights[0].size) if weights else 0.0


def _function(name: str, inputs: list[str], body: str) -> onnx.FunctionProto:
    """my.ops::name(inputs) computed as one ONNX `body` op: a model-local function ONNX Runtime inlines."""
    node = helper.make_node(body, inputs, ["Y"])
    return helper.make_function(DOMAIN, name, inputs, ["Y"], [node], [helper.make_opsetid("", 17)])


def _pointwise_function() -> onnx.FunctionProto:
    return _function("PointwiseConv", ["X", "W"], "Conv")


def _pointwise(node: onnx.NodeProto, t: ChannelTable) -> None:
    t.attach("producer", node, 1, 0, node.output[0])
    t.attach("consumer", node, 1, 1, node.input[0])


def _pointwise_timing(node: onnx.NodeProto, t: ChannelTable) -> LayerShape:
    """A pointwise conv times like a 1x1 Conv of the same widths at the same size."""
    (c_out, c_in), spatial = t.weights[node.input[1]].shape[:2], t.shapes[node.input[0]][2:]
    return LayerShape("conv", c_in, c_out, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), False, tuple(spatial))


@pytest.fixture
def pointwise_rule() -> Iterator[None]:
    register_rule("PointwiseConv", _pointwise, domain=DOMAIN, timing=_pointwise_timing)
    yield
    unregister_rule("PointwiseConv", DOMAIN)


def _pointwise_model() -> onnx.ModelProto:
    """x -> Conv 3->8 (3x3) -> my.ops::PointwiseConv 8->6 -> y."""
    rng = np.random.default_rng(2)
    arrays = {
        "w0": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "w1": rng.standard_normal((6, 8, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("PointwiseConv", ["a", "w1"], ["y"], name="pw", domain=DOMAIN),
    ]
    return _model(nodes, arrays, ["n", 3, 8, 8], ["n", 6, 8, 8], [_pointwise_function()])


def test_a_registered_op_with_a_timing_part_is_timed_by_the_latency_table(
    pointwise_rule, tmp_path: Path
) -> None:
    ga = analyze_graph(_pointwise_model())
    timer = CountingTimer()
    model = LatencyModel(ga, LatencyTable(timer, tmp_path / "table.json"), whole_ms=1000.0, round_to=1)
    layers = {layer.name: layer for layer in model.layers}
    assert sorted(layers) == ["conv", "pw"]
    pw = layers["pw"]
    assert pw.shape == LayerShape("conv", 8, 6, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), False, (8, 8), 2)
    assert (pw.in_tensor, pw.out_tensor) == ("a", "y")
    # the grid holds what the timer answered for a 1x1 Conv at each pair of widths: c_out x c_in weights
    assert pw.grid.tolist() == [[float(i * o) for o in pw.outputs] for i in pw.inputs]
    assert [6, 8, 1, 1] in timer.timed
    (conv_group,) = [g.id for g in ga.groups if g.prunable]  # conv's filters; pw's outputs are the graph's
    assert model.touches[conv_group] == [0, 1]  # pruning conv's filters narrows pw's input too


def test_without_a_timing_part_a_registered_op_is_not_timed(tmp_path: Path) -> None:
    register_rule("PointwiseConv", _pointwise, domain=DOMAIN)
    try:
        ga = analyze_graph(_pointwise_model())
        model = LatencyModel(ga, LatencyTable(CountingTimer(), tmp_path / "t.json"), whole_ms=1.0, round_to=1)
    finally:
        unregister_rule("PointwiseConv", DOMAIN)
    assert [layer.name for layer in model.layers] == ["conv"]


# ---- fused_into_producer: whose kernel computes a tensor --------------------------------------------


def _chain(ops: list[tuple[str, str]], functions: list[onnx.FunctionProto] = ()) -> onnx.ModelProto:
    """x -> Conv 3->4 -> each (op, domain) of `ops` in turn -> y; node i is named after its op."""
    rng = np.random.default_rng(3)
    arrays = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "g": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "b": rng.normal(0, 0.1, 4).astype(np.float32),
        "m": rng.normal(0, 0.1, 4).astype(np.float32),
        "v": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "s": rng.uniform(0.5, 1.5, (4, 1, 1)).astype(np.float32),
    }
    extra = {"BatchNormalization": ["g", "b", "m", "v"], "ChannelScale": ["s"]}
    nodes = [helper.make_node("Conv", ["x", "w"], ["t0"], name="conv", pads=[1, 1, 1, 1])]
    for i, (op, domain) in enumerate(ops):
        out = "y" if i == len(ops) - 1 else f"t{i + 1}"
        nodes.append(helper.make_node(op, [f"t{i}", *extra.get(op, [])], [out], name=op, domain=domain))
    return _model(nodes, arrays, ["n", 3, 6, 6], None, functions)


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def test_backends_fuse_batch_norm_and_the_usual_activations_into_the_conv() -> None:
    model = _chain([("BatchNormalization", ""), ("Relu", ""), ("MaxPool", ""), ("HardSwish", "")])
    producers = _producers(model)
    assert kernel_node("t2", producers).name == "conv"  # the Relu's output: conv + BN + Relu, one kernel
    # MaxPool has a kernel of its own; the HardSwish after it is computed there
    assert kernel_node("t3", producers).name == kernel_node("y", producers).name == "MaxPool"
    assert kernel_node("x", producers) is None
    fused = {op for (_, op), rule in RULES.items() if rule.fused_into_producer}
    assert fused == {"BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish"}


def _scale_function() -> onnx.FunctionProto:
    return _function("ChannelScale", ["X", "S"], "Mul")


@pytest.mark.parametrize("fused", [True, False])
def test_the_profile_attributes_a_registered_op_fused_into_the_conv_to_the_conv(
    fused: bool, tmp_path: Path
) -> None:
    """ONNX Runtime names a node it moved to the NCHWc layout after its output: the row is the conv's
    when the op between them is fused into its producer, the op's own otherwise."""
    path = tmp_path / "chain.onnx"
    onnx.save(_chain([("ChannelScale", DOMAIN), ("Relu", "")], [_scale_function()]), path)
    register_rule("ChannelScale", _scale, domain=DOMAIN, fused_into_producer=fused)
    try:
        label = _labeller(path)
        assert label("y_nchwc", "Conv") == ("conv" if fused else "ChannelScale")
        assert label("conv", "Conv") == "conv"  # a node of the source model keeps its name
    finally:
        unregister_rule("ChannelScale", DOMAIN)


# ---- absorbs_scale, inference_scale: what weight a backend runs -------------------------------------


def _folded_model(producer: tuple[str, str], norm: tuple[str, str], functions: list) -> onnx.ModelProto:
    """x -> producer (a 3x3 Conv or a PointwiseConv, 3->8) -> norm (BatchNormalization or ChannelScale)
    -> Relu -> y, with 3 filters as Adam + L2 leaves them: weights ~1e-30 (normal) and a scale of
    ~1e-10, so the weight a backend folds is ~1e-40: subnormal."""
    rng = np.random.default_rng(4)
    kernel = 3 if producer[0] == "Conv" else 1
    w = rng.standard_normal((8, 3, kernel, kernel)).astype(np.float32)
    w[:3] *= np.float32(1e-30)
    gamma = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    gamma[:3] *= np.float32(1e-10)
    if norm[0] == "BatchNormalization":
        beta, var = rng.standard_normal(8).astype(np.float32), rng.uniform(0.5, 2.0, 8).astype(np.float32)
        arrays = {"w": w, "g": gamma, "b": beta, "m": np.zeros(8, np.float32), "v": var}
    else:
        arrays = {"w": w, "s": gamma.reshape(8, 1, 1)}
    nodes = [
        helper.make_node(producer[0], ["x", "w"], ["c"], name="producer", domain=producer[1]),
        helper.make_node(norm[0], ["c", *list(arrays)[1:]], ["n"], name="norm", domain=norm[1]),
        helper.make_node("Relu", ["n"], ["y"], name="relu"),
    ]
    return _model(nodes, arrays, ["n", 3, 6, 6], None, functions)


def test_a_bn_scale_goes_into_the_conv_before_it() -> None:
    bn = helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], epsilon=0.01)
    values = {"g": np.array([2.0, 3.0], np.float32), "v": np.array([0.99, 3.99], np.float32)}
    np.testing.assert_allclose(rule_for(bn).inference_scale(bn, values.get), [2.0, 1.5], rtol=1e-6)
    unstored = helper.make_node("BatchNormalization", ["c", "g", "b", "m", "u"], ["n"])
    assert rule_for(unstored).inference_scale(unstored, values.get) is None
    assert bn_fold_scales(_folded_model(("Conv", ""), ("BatchNormalization", ""), [])).keys() == {"w"}
    assert {op for (_, op), rule in RULES.items() if rule.absorbs_scale is not None} == {"Conv"}


@contextlib.contextmanager
def _fold_rules(with_parts: bool) -> Iterator[None]:
    """PointwiseConv takes a following scale into its weight, ChannelScale is one (with_parts), or
    neither says so."""
    register_rule("PointwiseConv", _pointwise, domain=DOMAIN, absorbs_scale=1 if with_parts else None)
    scale = (lambda node, value: value(node.input[1])) if with_parts else None
    register_rule("ChannelScale", _scale, domain=DOMAIN, inference_scale=scale)
    try:
        yield
    finally:
        unregister_rule("PointwiseConv", DOMAIN)
        unregister_rule("ChannelScale", DOMAIN)


@pytest.mark.parametrize(
    ("producer", "norm"),
    [(("PointwiseConv", DOMAIN), ("BatchNormalization", "")), (("Conv", ""), ("ChannelScale", DOMAIN))],
    ids=["custom-producer", "custom-normalisation"],
)
@pytest.mark.parametrize("with_parts", [True, False])
def test_registered_ops_with_the_fold_parts_have_their_folded_weights_counted(
    producer: tuple[str, str], norm: tuple[str, str], with_parts: bool, tmp_path: Path
) -> None:
    """ONNX Runtime inlines the custom ops' functions and folds the scale into the conv (Conv + BN,
    Conv + Mul): the weights it runs hold the planted denormals (3 filters of 3 x k x k), and so
    does the count when the rules say which weight takes which scale."""
    model = _folded_model(producer, norm, [_pointwise_function(), _scale_function()])
    planted = 3 * 3 * (9 if producer[0] == "Conv" else 1)
    assert count_denormals(ort_fused(model, tmp_path)).total == planted
    with _fold_rules(with_parts):
        found = count_denormals(model)
    assert found.total == found.folded == (planted if with_parts else 0)


# ---- adds_depth, merges_residual: the depth advisor's blocks ----------------------------------------


def test_convs_add_depth_and_adds_merge_residuals() -> None:
    assert {op for (_, op), rule in RULES.items() if rule.adds_depth} == {"Conv"}
    assert {op for (_, op), rule in RULES.items() if rule.merges_residual} == {"Add"}


def _merge_function() -> onnx.FunctionProto:
    return _function("Merge", ["A", "B"], "Add")


def _merge(node: onnx.NodeProto, t: ChannelTable) -> None:
    for name in node.input:
        t.flow(name, node.output[0])


@pytest.mark.parametrize("with_parts", [True, False])
def test_the_depth_advisor_finds_a_block_of_registered_ops(with_parts: bool) -> None:
    """x -> Conv -> a; a -> PointwiseConv -> Relu -> h; my.ops::Merge(a, h) -> y: a residual block of
    depth 2 when PointwiseConv adds depth and Merge merges residuals; dropping it leaves the conv."""
    rng = np.random.default_rng(6)
    arrays = {
        "w0": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "w1": rng.standard_normal((4, 4, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("PointwiseConv", ["a", "w1"], ["p"], name="pw", domain=DOMAIN),
        helper.make_node("Relu", ["p"], ["h"], name="relu"),
        helper.make_node("Merge", ["a", "h"], ["y"], name="merge", domain=DOMAIN),
    ]
    model = _model(nodes, arrays, ["n", 3, 6, 6], ["n", 4, 6, 6], [_pointwise_function(), _merge_function()])
    register_rule("PointwiseConv", _pointwise, domain=DOMAIN, adds_depth=with_parts)
    register_rule("Merge", _merge, domain=DOMAIN, merges_residual=with_parts)
    try:
        blocks = find_residual_blocks(model)
        dropped = drop_blocks(model, ["merge"]) if blocks else None
    finally:
        unregister_rule("PointwiseConv", DOMAIN)
        unregister_rule("Merge", DOMAIN)
    if not with_parts:
        assert blocks == []
        return
    assert [(b.add, b.shortcut, b.residual, b.conv_depth) for b in blocks] == [("merge", "a", "h", 2)]
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    (shortcut,) = run(_with_output(model, "a"), {"x": x})[1:]
    (y,) = run(dropped, {"x": x})
    np.testing.assert_array_equal(y, shortcut)
    assert [n.name for n in dropped.graph.node] == ["conv", "merge"]  # the merge is a pass-through now


def _with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """A copy of the model with tensor `name` as a second graph output."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return copy


# ---- quantization: whether a graph runs int8 ------------------------------------------------------


def test_a_graph_with_quantize_dequantize_pairs_runs_int8(tmp_path: Path) -> None:
    arrays = {"scale": np.array(0.05, np.float32), "zero": np.array(0, np.int8)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], name="dq"),
    ]
    quantized = _model(nodes, arrays, ["n", 4], ["n", 4])
    plain = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], {}, ["n", 4], ["n", 4])
    assert runs_int8(quantized.graph) and not runs_int8(plain.graph)
    for name, model in {"quantized": quantized, "plain": plain}.items():
        onnx.save(model, tmp_path / f"{name}.onnx")
    x = np.random.default_rng(7).uniform(-3.0, 3.0, (2, 4)).astype(np.float32)  # inside int8's range
    (y,) = run(quantized, {"x": x})  # ONNX Runtime runs it: a real Q/DQ graph, x rounded to 0.05
    assert np.abs(y - x).max() <= 0.05 / 2 + 1e-6
    assert detect_precision(tmp_path / "quantized.onnx") == "int8"
    assert detect_precision(tmp_path / "plain.onnx") == "fp32"


def test_a_misspelt_part_is_refused_and_registers_nothing() -> None:
    with pytest.raises(TypeError, match="adds_dept"):
        register_rule("Merge", _merge, domain=DOMAIN, adds_dept=True)
    assert rule_for(helper.make_node("Merge", ["a", "b"], ["c"], domain=DOMAIN)) is None
