"""validate: identical models pass, a perturbed model fails and says by how much."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploysparse.backends import get_backend
from deploysparse.cli import main
from deploysparse.errors import CalibrationError
from deploysparse.validate import validate


def _classifier(path, noise=0.0, batch="N", fc_sign=1.0):
    """Conv-ReLU-GAP-Gemm with fixed weights; `noise` perturbs the weights, fc_sign=-1 flips predictions."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    weight += noise * np.random.default_rng(99).normal(size=weight.shape).astype(np.float32)
    fc_noise = np.random.default_rng(98).normal(size=(5, 8))
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(rng.normal(size=(8,)).astype(np.float32), "b"),
        numpy_helper.from_array(
            (fc_sign * rng.normal(size=(5, 8)) + noise * fc_noise).astype(np.float32), "fc"
        ),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def data(tmp_path):
    x = np.random.default_rng(1).normal(size=(40, 3, 6, 6)).astype(np.float32)
    np.save(tmp_path / "val.npy", x)
    return x


def test_same_function_passes_and_errors_match_a_direct_computation(tmp_path, data):
    original = _classifier(tmp_path / "orig.onnx")
    built = get_backend("onnxruntime").build(original, tmp_path / "out").artifact
    report = validate(original, built, tmp_path / "val.npy", batch_size=16)
    assert report.passed, report.failures
    assert report.samples == 40  # 16 + 16 + 8: the last short batch is used on dynamic-batch models

    ours = get_backend("onnxruntime").run(original, {"x": data})["logits"]
    theirs = get_backend("onnxruntime").run(built, {"x": data})["logits"]
    assert report.max_abs_err == pytest.approx(float(np.abs(ours - theirs).max()), abs=1e-7)
    assert report.cosine > 0.999999 and report.top1_agreement == 1.0


def test_perturbed_model_fails_with_reasons(tmp_path, data):
    original = _classifier(tmp_path / "orig.onnx")
    wrong = _classifier(tmp_path / "wrong.onnx", noise=0.05)
    report = validate(original, wrong, {"x": data})
    assert not report.passed
    ref = get_backend("onnxruntime").run(original, {"x": data})["logits"].astype(np.float64)
    out = get_backend("onnxruntime").run(wrong, {"x": data})["logits"].astype(np.float64)
    diff = np.abs(ref - out)
    over = int(np.count_nonzero(diff > 1e-4 + 1e-3 * np.abs(ref)))
    assert over > 0
    assert any(
        f"{over} of {ref.size} values differ by more than atol 0.0001 + rtol 0.001" in f
        for f in report.failures
    ), report.failures
    assert report.max_abs_err == pytest.approx(float(diff.max()), rel=1e-6)
    # the relative error is relative to the output's scale, not element by element
    assert report.max_rel_err == pytest.approx(float(diff.max() / np.abs(ref).max()), rel=1e-6)

    loose = validate(original, wrong, {"x": data}, atol=None, rtol=None, min_cosine=0.9)
    assert loose.passed, loose.failures


def test_labels_give_accuracy_and_accuracy_drop_gate(tmp_path, data):
    original = _classifier(tmp_path / "orig.onnx")
    wrong = _classifier(tmp_path / "wrong.onnx", fc_sign=-1.0)
    labels = get_backend("onnxruntime").run(original, {"x": data})["logits"].argmax(1)
    report = validate(
        original,
        wrong,
        {"x": data},
        labels=labels,
        atol=None,
        rtol=None,
        min_cosine=None,
        max_accuracy_drop=0.01,
    )
    assert report.accuracy_original == 1.0
    assert report.accuracy_compact < 1.0
    assert not report.passed and "accuracy dropped" in report.failures[0]
    payload = report.to_json()
    for key in (
        "max_abs_err",
        "max_rel_err",
        "cosine",
        "top1_agreement",
        "accuracy_original",
        "accuracy_compact",
        "passed",
    ):
        assert key in payload


def test_static_batch_models_use_full_batches(tmp_path, data):
    original = _classifier(tmp_path / "orig.onnx", batch=8)
    compact = _classifier(tmp_path / "compact.onnx", batch=8)
    report = validate(original, compact, {"x": data[:35]})
    assert report.samples == 32 and report.passed


def test_data_that_does_not_fit_is_a_calibration_error(tmp_path):
    original = _classifier(tmp_path / "orig.onnx")
    np.save(tmp_path / "bad.npy", np.ones((4, 3, 7, 7), np.float32))
    with pytest.raises(CalibrationError, match=r"bad\.npy.*\(4, 3, 7, 7\).*\(N, 3, 6, 6\)"):
        validate(original, original, tmp_path / "bad.npy")


def test_cli_exit_codes_and_json(tmp_path, data, capsys):
    original = _classifier(tmp_path / "orig.onnx")
    wrong = _classifier(tmp_path / "wrong.onnx", noise=0.05)
    val = str(tmp_path / "val.npy")

    assert main(["validate", str(original), str(original), "--data", val, "--json"]) is None
    assert json.loads(capsys.readouterr().out)["passed"] is True

    with pytest.raises(SystemExit) as exit_info:
        main(["validate", str(original), str(wrong), "--data", val, "--json"])
    assert exit_info.value.code == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["passed"] is False and payload["max_abs_err"] > 1e-3

    np.save(tmp_path / "bad.npy", np.ones((4, 3, 7, 7), np.float32))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", str(original), str(wrong), "--data", str(tmp_path / "bad.npy")])
    assert exit_info.value.code == 2
    assert "bad.npy" in capsys.readouterr().err
