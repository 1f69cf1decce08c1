"""The fp16 artefact (backends/fp16.py): explicit casts, fp32 kept where the calibration data shows that
fp16 overflows or loses the answer, and every decision judged on ONNX Runtime against the fp32 model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploysparse.backends import reference_backend
from deploysparse.backends.fp16 import FP16_MAX, RANGE_LIMIT, convert_fp16, simulate_fp16
from deploysparse.precision import DEFAULT_TOLERANCES
from deploysparse.validate import compare_outputs

pytest.importorskip("onnxconverter_common")


def _model(nodes, initializers, output="y"):
    graph = helper.make_graph(
        nodes,
        "fp16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _feeds(seed: int, n: int = 64) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)}


def _dense(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(8, 8)).astype(np.float32) / 3


def _judge(original: onnx.ModelProto, candidate: onnx.ModelProto, seed: int = 99):
    """A candidate (the fp16 file, or its storage simulation) against the fp32 model on fresh inputs,
    at the fp16 tolerances."""
    feeds = _feeds(seed)
    ref = reference_backend().intermediates(original, feeds)
    out = reference_backend().intermediates(candidate, feeds)
    return compare_outputs(
        ref,
        out,
        DEFAULT_TOLERANCES["fp16"],
        original="fp32",
        compact="fp16",
        backend="onnxruntime",
        precision="fp16",
    )


def _both_pass(model: onnx.ModelProto, conversion) -> None:
    """The fp16 file runs and answers like fp32, and so does fp16 storage of the values it keeps fp16."""
    for candidate in (conversion.model, simulate_fp16(model, {k.node for k in conversion.kept})):
        report = _judge(model, candidate)
        assert report.passed and not report.outputs[0].nonfinite, report.failures


def _float16_nodes(model: onnx.ModelProto) -> int:
    return sum(1 for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16)


def test_a_plain_network_becomes_fp16_with_casts_only_at_the_edges():
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["z"], name="fc2"),
            helper.make_node("Softmax", ["z"], ["y"], axis=1, name="softmax"),
        ],
        {"w1": _dense(1), "w2": _dense(2)},
    )
    conversion = convert_fp16(model, _feeds(0))
    assert conversion.kept == [] and conversion.candidates == 1  # the softmax was judged, and fits fp16
    assert conversion.judged_on == "64 calibration samples"
    assert _float16_nodes(conversion.model) == 2
    casts = [n for n in conversion.model.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2  # fp32 input -> fp16, fp16 output -> fp32
    _both_pass(model, conversion)
    assert conversion.simulated["passed"] and conversion.simulated["samples"] == 64
    assert _judge(model, simulate_fp16(model, set())).max_abs_err > 0  # fp16 storage really rounds


def test_activations_beyond_fp16s_range_stay_fp32():
    """x @ W with |W| ~ 2e4 reaches ~1e5: fp16 would give inf. Both the node producing it and the one
    reading it stay fp32, and the artefact's output is finite and within fp16 tolerance."""
    big = np.full((8, 8), 2e4, np.float32) * np.sign(_dense(3))
    model = _model(
        [
            helper.make_node("MatMul", ["x", "big"], ["h"], name="amplify"),
            helper.make_node("Mul", ["h", "scale"], ["s"], name="shrink"),
            helper.make_node("MatMul", ["s", "w"], ["y"], name="fc"),
        ],
        {"big": big, "scale": np.float32(1e-4), "w": _dense(4)},
    )
    conversion = convert_fp16(model, _feeds(0))
    kept = {k.node: k.reason for k in conversion.kept}
    assert set(kept) == {"amplify", "shrink"}
    assert all(f"{RANGE_LIMIT:g}" in reason for reason in kept.values())
    _both_pass(model, conversion)
    # stored in fp16 throughout, the same network overflows: the rule is what keeps it finite
    blind = reference_backend().intermediates(simulate_fp16(model, set()), _feeds(99))
    assert not np.isfinite(blind["y"]).all()


def test_a_node_whose_fp16_rounding_loses_the_answer_is_judged_and_kept():
    """x + 5000 - 5000: in fp16 the sum is rounded to multiples of 4, so the difference loses x. Both
    nodes touching the 5000-valued tensor are candidates; moving either to fp16 breaks the outputs."""
    model = _model(
        [
            helper.make_node("Add", ["x", "offset"], ["shifted"], name="shift"),
            helper.make_node("Sub", ["shifted", "offset"], ["y"], name="unshift"),
        ],
        {"offset": np.float32(5000.0)},
    )
    conversion = convert_fp16(model, _feeds(0))
    assert conversion.candidates == 2
    kept = {k.node: k.reason for k in conversion.kept}
    assert set(kept) == {"shift", "unshift"}
    assert all("leave the fp16 tolerances" in reason for reason in kept.values())
    _both_pass(model, conversion)
    assert not _judge(model, simulate_fp16(model, {"shift"})).passed  # one of them alone is not enough


def test_weights_beyond_fp16s_range_stay_fp32():
    model = _model(
        [
            helper.make_node("Mul", ["x", "huge"], ["h"], name="huge_mul"),
            helper.make_node("Relu", ["h"], ["y"]),
        ],
        {"huge": np.float32(1e5)},
    )
    kept = {k.node: k.reason for k in convert_fp16(model).kept}
    assert f"exceed fp16's range ({FP16_MAX:g})" in kept["huge_mul"]


def test_without_data_reductions_and_normalisations_stay_fp32_and_it_says_so():
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["z"], name="fc"),
            helper.make_node("Softmax", ["z"], ["y"], axis=1, name="softmax"),
        ],
        {"w": _dense(5)},
    )
    conversion = convert_fp16(model)
    assert [(k.node, k.op_type) for k in conversion.kept] == [("softmax", "Softmax")]
    assert (
        "no calibration data" in conversion.kept[0].reason and "no calibration data" in conversion.judged_on
    )
    assert _judge(model, conversion.model).passed
