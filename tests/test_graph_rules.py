"""The rule registry: a user registers an op the package has never seen and prunes through it exactly.

The custom ops are model-local ONNX functions in their own domain (ONNX Runtime inlines them), so the
original model runs as is and the compact model is compared with it on fresh random inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploysparse import api
from deploysparse.graph.analysis import analyze_graph
from deploysparse.graph.channels import ChannelTable
from deploysparse.graph.cost import count_cost
from deploysparse.graph.masking import zero_channels
from deploysparse.graph.queries import ConsumerView, consumer_input, group_producers
from deploysparse.graph.rules import Fold, Reading, filter_magnitude, register_rule, rule_for, unregister_rule
from deploysparse.graph.surgery import rewrite_graph
from deploysparse.plan import Plan
from tests.exporting import random_feeds, relative_error, run

DOMAIN = "my.ops"
TOLERANCE = 1e-5  # float32 sums of at most a few hundred terms, relative to the output's scale


def _functions() -> list[onnx.FunctionProto]:
    """PointwiseConv(X, W, B) = Conv(X, W, B) with a 1x1 kernel; ChannelScale(X, S) = X * S."""
    pointwise = helper.make_function(
        DOMAIN, "PointwiseConv", ["X", "W", "B"], ["Y"], [helper.make_node("Conv", ["X", "W", "B"], ["Y"])],
        [helper.make_opsetid("", 17)],
    )  # fmt: skip
    scale = helper.make_function(
        DOMAIN, "ChannelScale", ["X", "S"], ["Y"], [helper.make_node("Mul", ["X", "S"], ["Y"])],
        [helper.make_opsetid("", 17)],
    )  # fmt: skip
    return [pointwise, scale]


def _model(rng: np.random.Generator, dead_in: list[int], dead_mid: list[int]) -> onnx.ModelProto:
    """x -> Conv 3->8 (3x3, padded) -> PointwiseConv 8->6 -> ChannelScale -> Relu -> Conv 6->4 (1x1).

    dead_in: channels of the first conv with a zero filter but a non-zero bias (a constant the
    PointwiseConv must fold); dead_mid: PointwiseConv channels with zero weights and bias (output 0).
    """
    w0 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) / 5
    b0 = rng.normal(0, 0.5, 8).astype(np.float32)
    w0[dead_in] = 0
    w1 = rng.standard_normal((6, 8, 1, 1)).astype(np.float32) / 3
    b1 = rng.normal(0, 0.5, 6).astype(np.float32)
    w1[dead_mid], b1[dead_mid] = 0, 0
    s = rng.uniform(0.5, 1.5, (6, 1, 1)).astype(np.float32)
    w2 = rng.standard_normal((4, 6, 1, 1)).astype(np.float32) / 3
    inits = [
        numpy_helper.from_array(v, n)
        for n, v in [("w0", w0), ("b0", b0), ("w1", w1), ("b1", b1), ("s", s), ("w2", w2)]
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("PointwiseConv", ["a", "w1", "b1"], ["b"], name="pw", domain=DOMAIN),
        helper.make_node("ChannelScale", ["b", "s"], ["c"], name="scale", domain=DOMAIN),
        helper.make_node("Relu", ["c"], ["d"], name="relu"),
        helper.make_node("Conv", ["d", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
        functions=_functions(),
    )
    model.ir_version = 8
    return model


def _pointwise(node: onnx.NodeProto, t: ChannelTable) -> None:
    """Like a 1x1 conv: weight rows are the output channels, columns read the input's."""
    src, dst = node.input[0], node.output[0]
    t.attach("producer", node, 1, 0, dst)
    t.attach("consumer", node, 1, 1, src)
    t.attach("param", node, 2, 0, dst)
    t.constant_source(dst, filter_magnitude(t.weights[node.input[1]], 0))


def _scale(node: onnx.NodeProto, t: ChannelTable) -> None:
    """Per-channel scale: channels pass one to one, the scale is sliced with them."""
    t.flow(node.input[0], node.output[0])
    t.attach("param", node, 1, 0, node.output[0])


@pytest.fixture
def custom_rules():
    register_rule(
        "PointwiseConv",
        _pointwise,
        domain=DOMAIN,
        macs=lambda node, t: (
            int(np.prod(t.shapes[node.output[0]][1:])) * t.channels(node.input[0]),
            (node.input[0], node.output[0]),
        ),
        reads=lambda node, t: Reading(0, 1, "conv"),
        fold=Fold(
            exact=lambda node: True,  # no kernel, no padding: a constant input is constant everywhere
            contribution=lambda node, w, axis, values: w[:, :, 0, 0] @ values,
        ),
        zeroes=(1, 2),
    )
    register_rule("ChannelScale", _scale, domain=DOMAIN, zero_to_zero=True)
    yield
    unregister_rule("PointwiseConv", DOMAIN)
    unregister_rule("ChannelScale", DOMAIN)


def _assert_close(reference: onnx.ModelProto, compact: onnx.ModelProto, seed: int) -> None:
    feeds = random_feeds(reference, np.random.default_rng(seed), batch=3)
    for a, b in zip(run(reference, feeds), run(compact, feeds), strict=True):
        assert a.shape == b.shape
        assert relative_error(a, b) < TOLERANCE


def test_without_a_rule_a_custom_op_pins_its_channels() -> None:
    model = _model(np.random.default_rng(0), [1], [2])
    ga = analyze_graph(model)
    pinned = {(p.op, p.reason) for p in ga.pinned}
    assert ("PointwiseConv", f"no channel rule for {DOMAIN}::PointwiseConv") in pinned


def test_registered_custom_ops_prune_dead_channels_exactly(custom_rules) -> None:
    dead_in, dead_mid = [1, 5], [0, 3]
    model = _model(np.random.default_rng(1), dead_in, dead_mid)
    result = api.prune(model, criterion="dead", round_to=1)
    removed = {len(v) for v in result.plan.keep.values()}
    assert result.summary["channels_removed"] == len(dead_in) + len(dead_mid), removed
    weights = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    assert weights["w0"].shape[0] == 6 and weights["w1"].shape == (4, 6, 1, 1)
    assert weights["s"].shape == (4, 1, 1) and weights["w2"].shape == (4, 4, 1, 1)
    _assert_close(model, result.model, seed=11)  # the non-zero constants were folded into b1


def test_registered_custom_ops_follow_any_plan_like_the_masked_original(custom_rules) -> None:
    model = _model(np.random.default_rng(2), [], [])
    ga = analyze_graph(model)
    prunable = [g for g in ga.groups if g.prunable]
    assert len(prunable) == 2  # conv0's filters, and PointwiseConv's channels through the scale
    plan = Plan(keep={g.id: np.arange(0, g.size, 2) for g in prunable})
    compact = rewrite_graph(ga, plan).model
    _assert_close(zero_channels(ga, plan), compact, seed=12)
    before, after = count_cost(ga), count_cost(analyze_graph(compact))
    assert after.macs < before.macs
    assert count_cost(ga, {g.id: g.size // 2 for g in prunable}).macs == after.macs


def test_a_rule_cannot_be_registered_twice_by_accident(custom_rules) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_rule("ChannelScale", _scale, domain=DOMAIN)
    register_rule("ChannelScale", _scale, domain=DOMAIN, replace=True, zero_to_zero=True)
    node = helper.make_node("ChannelScale", ["a", "b"], ["c"], domain=DOMAIN)
    assert rule_for(node) is not None and rule_for(helper.make_node("ChannelScale", ["a"], ["c"])) is None


ZERO_CASES = [
    *[(op, {}) for op in ("Relu", "LeakyRelu", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softsign")],
    *[(op, {}) for op in ("Erf", "Abs", "Neg", "Sqrt", "Floor", "Ceil", "Round", "Sign", "Identity")],
    *[(op, {}) for op in ("ThresholdedRelu", "Sin", "GlobalAveragePool", "GlobalMaxPool")],
    *[(op, {}) for op in ("Sigmoid", "HardSigmoid", "Softplus", "Exp", "Cos")],
    ("MaxPool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
]


@pytest.mark.parametrize(("op", "attrs"), ZERO_CASES, ids=[op for op, _ in ZERO_CASES])
def test_zero_to_zero_says_what_onnx_runtime_computes(op: str, attrs: dict) -> None:
    """A rule's `zero_to_zero` is what lets a 0 channel pass zero padding: it must be true of the op."""
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (out,) = run(model, {"x": np.zeros((1, 2, 4, 4), np.float32)})
    ga = analyze_graph(model)
    assert rule_for(node).keeps_zero(ga.model.graph.node[0], ga.table) == (not np.any(out))


def test_queries_answer_what_criteria_ask_without_naming_ops() -> None:
    """group_producers: a conv's filters and its BN's scale/shift; consumer_input: how each consumer
    reads the group (an ungrouped conv over patches, a Gemm on flattened features, none for depthwise)."""
    rng = np.random.default_rng(5)
    arrays = {
        "w0": rng.standard_normal((6, 3, 3, 3)).astype(np.float32),
        "g": rng.uniform(0.5, 1.5, 6).astype(np.float32),
        "b": rng.normal(0, 0.1, 6).astype(np.float32),
        "m": rng.normal(0, 0.1, 6).astype(np.float32),
        "v": rng.uniform(0.5, 1.5, 6).astype(np.float32),
        "w1": rng.standard_normal((6, 1, 3, 3)).astype(np.float32),
        "w2": rng.standard_normal((4, 6, 1, 1)).astype(np.float32),
        "wf": rng.standard_normal((4 * 16, 5)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "g", "b", "m", "v"], ["bn"], name="bn0"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w1"], ["d"], name="dw", group=6, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d", "w2"], ["p"], name="pw"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v, n) for n, v in arrays.items()],
    )
    ga = analyze_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    conv_group = next(g for g in ga.groups if any(m.node == "conv0" for m in g.producers))
    found = group_producers(ga, conv_group)
    assert [m.node for m in found.filters] == ["conv0"]
    assert [(n.node, n.scale.name, n.shift.name) for n in found.norms] == [("bn0", "g", "b")]
    reads = {m.node: consumer_input(ga, m) for m in conv_group.consumers}
    assert reads == {"pw": ConsumerView("d", 1, "conv")}  # the depthwise conv is a param, not a reader
    pw_group = next(g for g in ga.groups if any(m.node == "pw" for m in g.producers))
    assert [consumer_input(ga, m) for m in pw_group.consumers] == [ConsumerView("f", 1, "dense")]
