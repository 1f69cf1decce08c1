"""The TensorRT artefact, made and validated without TensorRT (backends/trt_artifact.py): the precision
in the ONNX (fp16 casts, symmetric int8 Q/DQ), validated on ONNX Runtime CPU against the fp32 model,
2:4 sparse weights on request, and the commands that build the engine on the device; `build
--emit-command` and `run` with a TensorRT recipe on a machine without TensorRT."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploysparse.backends import get_backend, reference_backend
from deploysparse.backends.base import SHARED_METADATA
from deploysparse.backends.onnxruntime.build import quantize_qdq
from deploysparse.backends.trt_artifact import float_biases
from deploysparse.backends.trt_commands import PRECISION_FLAGS
from deploysparse.backends.trt_sparsity import is_2_4
from deploysparse.backends.trt_support import check_onnx
from deploysparse.calibration import model_input_specs
from deploysparse.errors import UsageError
from deploysparse.validate import validate

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
no_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="checks the behaviour without TensorRT")


def _conv_net(c: int = 64, offset: float | None = None) -> onnx.ModelProto:
    """Conv(3->c) -> Relu -> Conv(c->c) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(c->10); with
    `offset`, the logits go through +offset -offset (what int8 cannot carry)."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.normal(size=(c, 3, 3, 3)) / 3,
        "w2": rng.normal(size=(c, c, 3, 3)) / np.sqrt(9 * c),
        "fc": rng.normal(size=(10, c)) / np.sqrt(c),
        "fc_b": rng.normal(size=(10,)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4, name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1] * 4, name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node(
            "Gemm", ["f", "fc", "fc_b"], ["logits" if offset is None else "z"], transB=1, name="fc"
        ),
    ]
    if offset is not None:
        weights["offset"] = np.array(offset, np.float32)
        nodes += [
            helper.make_node("Add", ["z", "offset"], ["shifted"], name="shift"),
            helper.make_node("Sub", ["shifted", "offset"], ["logits"], name="unshift"),
        ]
    graph = helper.make_graph(
        nodes,
        "trt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _calib(n: int = 64, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 8, 8)).astype(np.float32)


def _emit(tmp_path: Path, model: onnx.ModelProto, precision: str, **options):
    source = tmp_path / "compact.onnx"
    onnx.save(model, str(source))
    backend = get_backend("tensorrt", engine="emit")
    return source, backend.build(source, tmp_path / "out", precision, **options)


def _zero_points(model: onnx.ModelProto) -> list[np.ndarray]:
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq, "an int8 artefact holds Q/DQ nodes"
    return [stored[n.input[2]] for n in qdq]


def test_int8_artefact_is_symmetric_s8_and_validated_before_any_engine(tmp_path):
    source, result = _emit(tmp_path, _conv_net(), "int8", calib={"x": _calib()})
    out = tmp_path / "out"
    assert result.artifact == out / "model.int8.onnx" and result.runs_on == "onnxruntime"
    assert result.not_built == "engine not built: --emit-command: the artefact and the commands only"
    assert not (out / "model.engine").exists()
    artefact = onnx.load(str(result.artifact))
    for zero_point in _zero_points(artefact):  # TensorRT quantises symmetrically to signed int8
        assert zero_point.dtype == np.int8 and not zero_point.any()
    assert check_onnx(artefact).ok
    meta = json.loads((out / "model.int8.onnx.json").read_text())
    assert set(SHARED_METADATA) <= set(meta)  # one metadata schema, engine or not
    assert meta["precision"] == "int8" and meta["engine"] == {"built": False, "reason": result.not_built[18:]}
    checked = meta["artifact_validation"]
    assert checked["passed"] and checked["samples"] == 64 and checked["data"] == "64 calibration samples"
    assert checked["backend"] == "onnxruntime" and checked["cosine"] >= 0.98
    assert meta["int8_mode"] == "explicit Q/DQ, calibrated here" and meta["strongly_typed"] is True
    assert meta["float_biases"] == 1  # the Gemm's bias, dequantised here rather than on the device
    # the figures are real: validating the artefact again on fresh data agrees with the fp32 model
    again = validate(source, result.artifact, {"x": _calib(32, seed=9)}, precision="int8")
    assert again.passed, again.failures


def test_int32_bias_dequantisation_is_folded_into_float_biases_without_changing_the_outputs(tmp_path):
    """ONNX Runtime's quantiser stores a Gemm/Conv bias as int32 behind a DequantizeLinear, which
    TensorRT's parser refuses; the artefact carries the float values ONNX Runtime computes from it.
    The QDQ model is in TensorRT's scheme (zero points 0), so the biases are all the check refuses."""
    source = tmp_path / "m.onnx"
    onnx.save(_conv_net(), str(source))
    specs = model_input_specs(onnx.load(str(source)))
    qdq = onnx.load(str(quantize_qdq(source, specs, {"x": _calib()}, tmp_path / "q" / "int8.onnx").path))
    refused = check_onnx(qdq)
    assert {f.op_type for f in refused.unsupported} == {"DequantizeLinear"}
    assert "INT32 quantisation (a quantised bias" in refused.unsupported[0].reason
    folded = onnx.ModelProto()
    folded.CopyFrom(qdq)
    assert float_biases(folded) == len(refused.unsupported)
    assert check_onnx(folded).ok
    feeds = {"x": _calib(16, seed=5)}
    before = reference_backend().intermediates(qdq, feeds)["logits"]
    after = reference_backend().intermediates(folded, feeds)["logits"]
    np.testing.assert_array_equal(after, before)


def test_the_emitted_commands_name_the_artefacts_inputs_and_shapes(tmp_path):
    _, result = _emit(
        tmp_path,
        _conv_net(),
        "fp16",
        shapes={"x": ((1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))},
        workspace_mb=512,
    )
    out = tmp_path / "out"
    commands = result.metadata["commands"]
    words = shlex.split(commands["trtexec"])
    artefact = onnx.load(str(result.artifact))
    names = [spec.name for spec in model_input_specs(artefact)]
    assert names == ["x"]
    flags = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    assert flags["--onnx"] == "model.fp16.onnx" and (out / flags["--onnx"]).is_file()
    assert (flags["--minShapes"], flags["--optShapes"], flags["--maxShapes"]) == (
        "x:1x3x8x8",
        "x:4x3x8x8",
        "x:16x3x8x8",
    )
    assert "--stronglyTyped" in words and not set(words) & set(PRECISION_FLAGS)
    assert flags["--memPoolSize"] == "workspace:512" and flags["--timingCacheFile"] == "timing.cache"
    script = (out / "build-engine.sh").read_text()
    assert commands["trtexec"] in script.splitlines() and 'cd "$(dirname "$0")"' in script
    # fp16 without calibration data: validated on random inputs, and it says so
    assert "random inputs" in result.metadata["artifact_validation"]["data"]
    assert "no calibration data" in result.metadata["fp16"]["judged_on"]
    float16 = [t for t in artefact.graph.initializer if t.data_type == TensorProto.FLOAT16]
    assert len(float16) >= 3  # the weights are fp16 in the file: the precision lives in the ONNX


def test_an_artefact_that_fails_its_validation_gets_no_commands(tmp_path, cli):
    """+5000 -5000 around the logits: int8 rounds the shifted values to steps of ~40 and loses them."""
    np.save(tmp_path / "calib.npy", _calib())
    onnx.save(_conv_net(), str(tmp_path / "good.onnx"))
    good = ("build", tmp_path / "good.onnx", "--backend", "tensorrt", "--precision", "int8")
    assert cli(*good, "--calib", tmp_path / "calib.npy", "--emit-command", "-o", tmp_path / "out").code == 0
    assert (tmp_path / "out" / "build-engine.sh").exists()
    onnx.save(_conv_net(offset=5000.0), str(tmp_path / "m.onnx"))
    args = ("build", tmp_path / "m.onnx", "--backend", "tensorrt", "--precision", "int8")
    result = cli(*args, "--calib", tmp_path / "calib.npy", "--emit-command", "-o", tmp_path / "out")
    assert result.code == 1, result.err
    assert "fails its validation" in result.out and "FAILED" in result.out
    assert not (tmp_path / "out" / "build-engine.sh").exists()  # the good model's commands are gone too
    meta = json.loads((tmp_path / "out" / "model.int8.onnx.json").read_text())
    assert "commands" not in meta and meta["artifact_validation"]["passed"] is False


def test_sparsity_2_4_is_exact_in_qualifying_layers_and_survives_int8(tmp_path):
    _, result = _emit(tmp_path, _conv_net(), "int8", calib={"x": _calib()}, sparsity="2:4")
    sparsity = result.metadata["sparsity"]
    assert [layer["node"] for layer in sparsity["layers_sparse"]] == ["conv2"]
    assert {layer["node"] for layer in sparsity["layers_dense"]} == {"conv1", "fc"}
    change = sparsity["change"]
    assert change["samples"] == 64 and 0 < change["cosine"] < 1  # measured: the outputs moved
    # the int8 weights keep the 2:4 pattern (zero point 0: a zero stays zero) in conv2 only
    artefact = onnx.load(str(result.artifact))
    stored = {t.name: numpy_helper.to_array(t) for t in artefact.graph.initializer}
    producers = {o: n for n in artefact.graph.node for o in n.output}
    for node in artefact.graph.node:
        if node.op_type != "Conv":
            continue
        dequantize = producers[node.input[1]]
        weight = stored[dequantize.input[0]]
        assert weight.dtype == np.int8
        assert is_2_4(weight, 1) is (node.name == "conv2"), node.name
    trtexec = shlex.split(result.metadata["commands"]["trtexec"])
    assert "--sparsity=enable" in trtexec
    assert "--sparse-weights" in shlex.split(result.metadata["commands"]["polygraphy"])


def test_sparsity_and_tensorrt_options_are_refused_where_they_mean_nothing(tmp_path, cli):
    onnx.save(_conv_net(), str(tmp_path / "m.onnx"))
    with pytest.raises(UsageError, match="--sparsity 2:4: the onnxruntime backend runs weights dense"):
        get_backend("onnxruntime").build(tmp_path / "m.onnx", tmp_path / "out", sparsity="2:4")
    result = cli("build", tmp_path / "m.onnx", "--emit-command", "-o", tmp_path / "out")
    assert result.code == 2 and "--emit-command applies to --backend tensorrt" in result.err


@no_tensorrt
def test_a_plain_build_still_needs_tensorrt_and_names_the_way_out(tmp_path, cli):
    onnx.save(_conv_net(), str(tmp_path / "m.onnx"))
    result = cli("build", tmp_path / "m.onnx", "--backend", "tensorrt", "-o", tmp_path / "out")
    assert result.code == 2 and "TensorRT is not installed" in result.err


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_zoo_artefacts_pass_validate_at_the_documented_tolerances(tmp_path, digits, precision):
    """The digits CNN on held-out digits with labels, at precision.py's default tolerances for the
    precision (fp16: atol/rtol 1e-2, cosine 0.995; int8: cosine 0.98, top-1 agreement 0.9)."""
    backend = get_backend("tensorrt", engine="emit")
    result = backend.build(digits["model"], tmp_path / "out", precision, calib=digits["calib"])
    report = validate(
        digits["model"], result.artifact, digits["val"], labels=digits["labels"], precision=precision
    )
    assert report.passed, report.failures
    assert report.accuracy_compact >= report.accuracy_original - 0.01


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_zoo_resnet_artefacts_pass_validate(tmp_path, precision):
    """CIFAR ResNet-20 (seeded weights) on random inputs, at the default tolerances."""
    import torch

    from deploysparse.frontend.torch_export import export_onnx
    from deploysparse.zoo.resnet import cifar_resnet

    source = export_onnx(cifar_resnet(20).eval(), torch.randn(1, 3, 32, 32), tmp_path / "resnet20.onnx")
    name = model_input_specs(onnx.load(str(source)))[0].name
    rng = np.random.default_rng(3)
    calib = {name: rng.normal(size=(64, 3, 32, 32)).astype(np.float32)}
    result = get_backend("tensorrt", engine="emit").build(source, tmp_path / "out", precision, calib=calib)
    fresh = {name: rng.normal(size=(64, 3, 32, 32)).astype(np.float32)}
    report = validate(source, result.artifact, fresh, precision=precision)
    assert report.passed, report.failures


@pytest.mark.slow
@no_tensorrt
def test_run_jetson_orin_int8_without_tensorrt_writes_the_validated_artefact_and_the_command(
    tmp_path, digits, cli
):
    out = tmp_path / "out"
    result = cli(
        "run",
        "jetson-orin-int8",
        "--model",
        digits["model"],
        "--calib",
        digits["calib"],
        "--data",
        digits["val"],
        "--labels",
        digits["labels"],
        "-o",
        out,
    )
    assert result.code == 0, result.err + result.out
    assert "engine not built: TensorRT is not installed" in result.out
    assert f"sh {out}/build/build-engine.sh" in result.out
    report = json.loads((out / "report.json").read_text())
    build = report["extra"]["build"]
    assert build["artifact"] == "build/model.int8.onnx" and build["runs_on"] == "onnxruntime"
    assert build["engine"] == {"built": False, "reason": "TensorRT is not installed"}
    assert report["validation"]["passed"] and report["validation"]["backend"] == "onnxruntime"
    assert report["validation"]["compact"] == "build/model.int8.onnx"
    assert report["latency"]["compact"] == [] and report["target"]["device"].startswith("none:")
    assert any("no latency was measured" in w for w in report["warnings"])
    for name in ("build/model.int8.onnx", "build/build-engine.sh", "build/model.int8.onnx.json"):
        assert name in report["artifacts"]
    words = shlex.split(build["commands"]["trtexec"])
    assert "--stronglyTyped" in words and not set(words) & set(PRECISION_FLAGS)
    input_name = model_input_specs(onnx.load(str(out / "build" / "model.int8.onnx")))[0].name
    assert f"--optShapes={input_name}:1x1x16x16" in words  # the recipe's batch [1, 1, 1]
    for zero_point in _zero_points(onnx.load(str(out / "build" / "model.int8.onnx"))):
        assert not zero_point.any()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_the_engine_is_built_strongly_typed_from_the_validated_artefact(tmp_path, precision):
    trt = pytest.importorskip("tensorrt")
    if int(trt.__version__.split(".")[0]) < 10:
        pytest.skip("strongly typed networks need TensorRT 10")
    source, result = tmp_path / "m.onnx", None
    onnx.save(_conv_net(), str(source))
    result = get_backend("tensorrt").build(source, tmp_path / "out", precision, calib={"x": _calib()})
    meta = json.loads((tmp_path / "out" / "model.engine.json").read_text())
    assert meta["engine"]["built"] and meta["engine_typing"].startswith("strongly typed")
    report = validate(
        source, result.artifact, {"x": _calib(32, seed=9)}, backend="tensorrt", precision=precision
    )
    assert report.passed, report.failures
