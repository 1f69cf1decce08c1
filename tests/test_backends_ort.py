"""ONNX Runtime backend: fp32 optimisation, int8 QDQ keeping digits accuracy, fp16, errors and the CLI."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploysparse.backends import get_backend, parse_shapes
from deploysparse.backends.base import SHARED_METADATA
from deploysparse.backends.quantize import Int8Options
from deploysparse.cli import main
from deploysparse.errors import BackendError, UsageError
from deploysparse.hashing import sha256_model


def _conv_model(path, batch="N", seed=0):
    """Conv-ReLU-GlobalAveragePool-Gemm classifier on 3x8x8 inputs, random weights."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "conv.weight"),
        numpy_helper.from_array(rng.normal(size=(8,)).astype(np.float32), "conv.bias"),
        numpy_helper.from_array(rng.normal(size=(10, 8)).astype(np.float32), "fc.weight"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.weight"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_fp32_build_writes_optimized_model_that_computes_the_same(tmp_path):
    source = _conv_model(tmp_path / "m.onnx")
    backend = get_backend("onnxruntime")
    result = backend.build(source, tmp_path / "out", "fp32")
    assert result.artifact == tmp_path / "out" / "model.optimized.onnx" and result.artifact.exists()
    meta = json.loads((tmp_path / "out" / "model.optimized.onnx.json").read_text())
    assert meta["source_sha256"] == sha256_model(source)
    assert meta["precision"] == "fp32" and meta["providers"][0] == "CPUExecutionProvider"
    assert set(SHARED_METADATA) <= set(meta)
    assert meta["backend"] == "onnxruntime" and meta["device"] == backend.device() and meta["shapes"] == {}
    x = np.random.default_rng(5).normal(size=(4, 3, 8, 8)).astype(np.float32)
    expected = backend.run(source, {"x": x})["logits"]
    got = backend.run(result.artifact, {"x": x})["logits"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _train_digits_cnn():
    """A tiny CNN trained on sklearn digits (8x8) in a couple of seconds; returns ONNX model + data."""
    torch = pytest.importorskip("torch")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    conv1, conv2, fc = (
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.Linear(16 * 16, 10),
    )
    params = [*conv1.parameters(), *conv2.parameters(), *fc.parameters()]

    def forward(x):
        h = torch.relu(conv1(x))
        h = torch.nn.functional.max_pool2d(h, 2)
        h = torch.relu(conv2(h))
        return fc(h.flatten(1))

    optimizer = torch.optim.Adam(params, lr=1e-2)
    xs, ys = torch.from_numpy(images[train]), torch.from_numpy(labels[train])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and immune to a busy machine
    try:
        for _ in range(10):
            for start in range(0, len(train), 100):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(
                    forward(xs[start : start + 100]), ys[start : start + 100]
                )
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)

    def init(name, tensor):
        return numpy_helper.from_array(tensor.detach().numpy().astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["a1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2.w", "c2.b"], ["a2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [
            init("c1.w", conv1.weight),
            init("c1.b", conv1.bias),
            init("c2.w", conv2.weight),
            init("c2.b", conv2.bias),
            init("fc.w", fc.weight),
            init("fc.b", fc.bias),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, images[train], images[test], labels[test]


def test_int8_qdq_on_digits_keeps_accuracy_within_one_point(tmp_path):
    """Every layer in int8 (`--int8-layers auto` would choose by timing, so the artefact would vary
    with the machine's load); the scheme follows the CPU (7-bit weights without VNNI), so the bound
    holds on CPUs with and without it."""
    model, calib, test_x, test_y = _train_digits_cnn()
    source = tmp_path / "digits.onnx"
    onnx.save(model, str(source))
    np.save(tmp_path / "calib.npy", calib[:256])
    backend = get_backend("onnxruntime")
    result = backend.build(
        source, tmp_path / "int8", "int8", calib=tmp_path / "calib.npy", int8=Int8Options(layers="all")
    )

    qdq = onnx.load(str(tmp_path / "int8" / "model.int8.onnx"))
    ops = [n.op_type for n in qdq.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    weight_scales = [
        numpy_helper.to_array(i)
        for i in qdq.graph.initializer
        if i.name.startswith("c1.w") and "scale" in i.name
    ]
    assert weight_scales and weight_scales[0].shape == (8,), "weights must be quantised per output channel"
    assert result.metadata["calibration_samples"] == 256

    fp32 = backend.run(source, {"x": test_x})["logits"].argmax(1)
    int8 = backend.run(result.artifact, {"x": test_x})["logits"].argmax(1)
    acc_fp32, acc_int8 = np.mean(fp32 == test_y), np.mean(int8 == test_y)
    assert acc_fp32 > 0.9, f"the test CNN did not train ({acc_fp32:.3f})"
    assert acc_int8 >= acc_fp32 - 0.01, (acc_fp32, acc_int8)


def test_int8_without_calibration_is_a_usage_error(tmp_path):
    source = _conv_model(tmp_path / "m.onnx")
    with pytest.raises(UsageError, match="--calib"):
        get_backend("onnxruntime").build(source, tmp_path / "out", "int8")


def test_fp16_without_onnxconverter_common_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)
    source = _conv_model(tmp_path / "m.onnx")
    with pytest.raises(BackendError, match=r"pip install onnxconverter-common"):
        get_backend("onnxruntime").build(source, tmp_path / "out", "fp16")


def test_fp16_build_when_converter_is_installed(tmp_path):
    pytest.importorskip("onnxconverter_common")
    source = _conv_model(tmp_path / "m.onnx")
    backend = get_backend("onnxruntime")
    result = backend.build(source, tmp_path / "out", "fp16")
    x = np.random.default_rng(6).normal(size=(2, 3, 8, 8)).astype(np.float32)
    expected = backend.run(source, {"x": x})["logits"]
    np.testing.assert_allclose(
        backend.run(result.artifact, {"x": x})["logits"], expected, rtol=2e-2, atol=2e-2
    )


def test_unknown_backend_and_shape_options():
    with pytest.raises(UsageError, match="unknown backend"):
        get_backend("tvm")
    shapes = parse_shapes(["input:1x3x32x32,8x3x32x32,32x3x32x32"])
    assert shapes["input"] == ((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))
    assert parse_shapes("x:4x3")["x"] == ((4, 3), (4, 3), (4, 3))
    for bad in ("1x3x32x32", "x:1x3,8x3x2", "x:8x3,1x3", "x:ax3"):
        with pytest.raises(UsageError):
            parse_shapes([bad])


def test_shapes_naming_a_missing_input_are_refused(tmp_path):
    source = _conv_model(tmp_path / "m.onnx")
    with pytest.raises(UsageError, match=r"'image'.*inputs x"):
        get_backend("onnxruntime").build(source, tmp_path / "out", shapes=parse_shapes("image:1x3x8x8"))


def test_cli_build_exit_codes(tmp_path, capsys):
    source = _conv_model(tmp_path / "m.onnx")
    with pytest.raises(SystemExit) as exit_info:
        main(["build", str(tmp_path / "absent.onnx"), "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "absent.onnx" in capsys.readouterr().err

    assert main(["build", str(source), "-o", str(tmp_path / "out"), "--json"]) is None
    payload = json.loads(capsys.readouterr().out)
    assert payload["backend"] == "onnxruntime" and payload["artifact"].endswith("model.optimized.onnx")

    with pytest.raises(SystemExit) as exit_info:
        main(["build", str(source), "--precision", "int8", "-o", str(tmp_path / "q")])
    assert exit_info.value.code == 2
