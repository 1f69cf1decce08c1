"""2:4 structured sparsity (backends/trt_sparsity.py): an exact 2:4 pattern by magnitude in the layers
sparse tensor cores run, none elsewhere, and the reason for every layer left dense."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper, numpy_helper

from deploysparse.backends import reference_backend
from deploysparse.backends.trt_sparsity import MIN_CHANNELS, is_2_4, prune_2_4, sparsify_2_4, weight_axis


@settings(max_examples=50, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.sampled_from([4, 8, 12]), st.integers(1, 3)),
        elements=st.floats(-10, 10, width=32),
    ),
    st.integers(0, 2),
)
def test_prune_keeps_the_two_largest_of_every_four(weight, axis):
    if weight.shape[axis] % 4:
        axis = 1  # the axis of length 4, 8 or 12
    pruned = prune_2_4(weight, axis)
    assert is_2_4(pruned, axis)
    assert np.all((pruned == 0) | (pruned == weight))  # values kept as they were, the rest zeroed
    groups = np.moveaxis(np.abs(weight), axis, -1).reshape(-1, 4)
    kept = np.moveaxis(np.abs(pruned), axis, -1).reshape(-1, 4)
    # what is kept is the two largest magnitudes of each group (ties: either may go)
    assert np.allclose(np.sort(kept, axis=1)[:, 2:], np.sort(groups, axis=1)[:, 2:])


def _weight(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _network() -> onnx.ModelProto:
    """Every kind of layer the choice distinguishes, on a 64-channel 8x8 map."""
    c = MIN_CHANNELS
    weights = {
        "w_stem": _weight((c, 3, 3, 3), 0),  # 3 input channels: not a multiple of 4
        "w_dense": _weight((c, c, 3, 3), 1),  # qualifies
        "w_depthwise": _weight((c, 1, 3, 3), 2),  # group = 64
        "w_narrow": _weight((32, c, 1, 1), 3),  # 32 output channels: below MIN_CHANNELS
        "w_fc": _weight((c, 32 * 16), 4),  # Gemm transB=1: [N=64, K=512], qualifies
        "w_head": _weight((c, 10), 5),  # MatMul [K=64, N=10]: too few outputs
    }
    nodes = [
        helper.make_node("Conv", ["x", "w_stem"], ["a"], pads=[1] * 4, name="stem"),
        helper.make_node("Conv", ["a", "w_dense"], ["b"], pads=[1] * 4, name="dense"),
        helper.make_node("Relu", ["b"], ["b_relu"], name="relu"),
        helper.make_node("Conv", ["b_relu", "w_depthwise"], ["d"], pads=[1] * 4, group=c, name="depthwise"),
        helper.make_node("Conv", ["d", "w_narrow"], ["n"], name="narrow"),
        helper.make_node("MaxPool", ["n"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w_fc"], ["g"], transB=1, name="fc"),
        helper.make_node("MatMul", ["g", "w_head"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "sparse",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_only_dense_wide_layers_become_2_4_and_every_other_layer_says_why():
    model = _network()
    result = sparsify_2_4(model)
    assert {layer.node for layer in result.sparse} == {"dense", "fc"}
    reasons = {layer.node: layer.reason for layer in result.layers if not layer.sparse}
    assert "not a multiple of 4" in reasons["stem"]
    assert "group 64" in reasons["depthwise"]
    assert f"below {MIN_CHANNELS}" in reasons["narrow"] and f"below {MIN_CHANNELS}" in reasons["head"]
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    for node in result.model.graph.node:
        found = weight_axis(node, result.model)
        if found is None:
            continue
        name, axis = found
        if node.name in ("dense", "fc"):
            assert is_2_4(after[name], axis) and not is_2_4(before[name], axis)
            assert np.count_nonzero(after[name]) == after[name].size // 2
        else:  # untouched, bit for bit
            assert np.array_equal(after[name], before[name])
    assert result.zeroed == (before["w_dense"].size + before["w_fc"].size) // 2
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[1]), before["w_dense"])  # input kept

    # the sparse model computes the masked weights: its outputs move, and stay finite
    feeds = {"x": np.random.default_rng(7).normal(size=(4, 3, 8, 8)).astype(np.float32)}
    dense = reference_backend().intermediates(model, feeds)["y"]
    sparse = reference_backend().intermediates(result.model, feeds)["y"]
    assert np.isfinite(sparse).all() and not np.allclose(dense, sparse)


def test_a_weight_read_by_two_layers_is_left_dense():
    model = _network()
    model.graph.node.append(helper.make_node("Conv", ["b", "w_dense"], ["again"], pads=[1] * 4, name="reuse"))
    result = sparsify_2_4(model)
    reasons = {layer.node: layer.reason for layer in result.layers if not layer.sparse}
    assert "shared with node 'reuse'" in reasons["dense"] and "shared" in reasons["reuse"]


@pytest.mark.parametrize("bad", [(4, 6), (3, 8, 2)])
def test_the_pattern_check_refuses_what_is_not_2_4(bad):
    weight = np.ones(bad, np.float32)
    assert not is_2_4(weight, 1)
