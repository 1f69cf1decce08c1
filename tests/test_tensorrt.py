"""TensorRT: the op-support check (runs anywhere), profile resolution, and GPU builds where available."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploysparse.backends import get_backend
from deploysparse.backends.onnxruntime.build import quantize_qdq
from deploysparse.backends.quantize import Int8Options
from deploysparse.backends.tensorrt import resolve_profile
from deploysparse.backends.trt_support import check_onnx
from deploysparse.backends.trt_versions import NEWEST, target
from deploysparse.calibration import model_input_specs
from deploysparse.cli import main
from deploysparse.errors import UsageError

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _model(extra_nodes=(), outputs=("y",), batch="N"):
    weight = numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w"
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
        *extra_nodes,
    ]
    graph = helper.make_graph(
        nodes,
        "trt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_supported_graph_passes():
    report = check_onnx(_model())
    assert report.ok and report.opset == 17 and not report.warnings
    assert report.target.table.version == NEWEST and report.to_json()["trt_version"] == str(NEWEST)
    assert report.to_json()["table"] == f"onnx/onnx-tensorrt docs/operators.md, TensorRT {NEWEST} GA"


def test_unsupported_op_is_named_with_its_node():
    model = _model([helper.make_node("Unique", ["y"], ["u"], name="dedupe")], outputs=("u",))
    report = check_onnx(model)
    assert not report.ok
    assert report.unsupported[0].node == "dedupe" and report.unsupported[0].op_type == "Unique"
    assert "Unique" in report.summary() and f"TensorRT {NEWEST}" in report.summary()


def test_restrictions_read_off_the_graph():
    pool = helper.make_node("MaxPool", ["y"], ["p", "idx"], kernel_shape=[2, 2], name="pool")
    custom = helper.make_node("FusedConv", ["y"], ["f"], domain="com.microsoft", name="fused")
    shape = helper.make_node("Shape", ["y"], ["s"], name="shape")
    dynamic_axes = helper.make_node("Squeeze", ["y", "s"], ["q"], name="squeeze")
    model = _model([pool, custom, shape, dynamic_axes], outputs=("p", "f", "q"))
    reasons = {f.node: f.reason for f in check_onnx(model, "8.6").unsupported}
    assert "Indices" in reasons["pool"]
    assert "com.microsoft" in reasons["fused"]
    assert "axes" in reasons["squeeze"] and "shape" not in reasons
    # 10.15 only asks that Squeeze's axes resolve to a constant at build time: the graph cannot
    # tell, so it is a warning naming the node, not a rejection
    newest = check_onnx(model)
    assert "squeeze" not in {f.node for f in newest.unsupported}
    assert any("node 'squeeze'" in w and "resolvable" in w for w in newest.warnings)
    newer = _model()
    newer.opset_import[0].version = 18
    assert check_onnx(newer, "8.6").warnings and not check_onnx(newer, "10.15").warnings


def _topk_model(k: int, **attributes):
    """Conv -> Flatten -> TopK(K) with K an initializer."""
    flatten = helper.make_node("Flatten", ["y"], ["flat"], name="flatten")
    topk = helper.make_node("TopK", ["flat", "k"], ["values", "indices"], name="topk", **attributes)
    model = _model([flatten, topk], outputs=("values", "indices"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([k], np.int64), "k"))
    return model


def test_topk_restrictions_of_tensorrt_10():
    assert check_onnx(_topk_model(5)).ok
    unsorted = check_onnx(_topk_model(5, sorted=0))
    assert [(f.node, f.op_type) for f in unsorted.unsupported] == [("topk", "TopK")]
    assert "sorted must be 1" in unsorted.unsupported[0].reason
    assert "less than 3840" in check_onnx(_topk_model(3840)).unsupported[0].reason
    # TensorRT 8.6's table lists neither restriction
    assert check_onnx(_topk_model(5, sorted=0), "8.6").ok


def test_scatter_nd_reduction_is_refused_by_tensorrt_10():
    scatter = helper.make_node("ScatterND", ["y", "idx", "upd"], ["s"], reduction="add", name="scatter")
    model = _model([scatter], outputs=("s",))
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.zeros((1, 1), np.int64), "idx"),
            numpy_helper.from_array(np.ones((1, 4, 8, 8), np.float32), "upd"),
        ]
    )
    assert "reduction 'add'" in check_onnx(model, "10.x").unsupported[0].reason
    assert check_onnx(model, "8.6").ok


def test_ops_each_release_added_are_refused_by_older_tables():
    gelu = _model([helper.make_node("Gelu", ["y"], ["g"], name="gelu")], outputs=("g",))
    gelu.opset_import[0].version = 20
    assert check_onnx(gelu, "10.0").ok
    assert "not in the TensorRT 8.6" in check_onnx(gelu, "8.6").unsupported[0].reason


@pytest.mark.parametrize(
    ("asked", "table", "noted"),
    [
        ("10.15", "10.15", False),
        ("10.x", str(NEWEST), False),
        ("10.3.0.26", "10.1", True),  # JetPack 6.1's TensorRT: the newest older table, said so
        ("9.3", "8.6", True),
        ("11.1", str(NEWEST), True),  # newer than every table: the newest, said so
        (None, str(NEWEST), False),
    ],
)
def test_version_picks_its_table(asked, table, noted):
    chosen = target(asked)
    assert str(chosen.table.version) == table and bool(chosen.note) is noted


@pytest.mark.parametrize("bad", ["ten", "8.2", "10.3-rc"])
def test_bad_or_unknown_versions_are_refused(bad):
    with pytest.raises(UsageError, match="--trt-version"):
        target(bad)


def test_tensorrt_qdq_model_is_accepted_and_the_cpu_one_is_not(tmp_path):
    """The quantiser's TensorRT scheme (zero point 0) passes the check; ONNX Runtime's own int8 build
    on x86 writes U8S8 (asymmetric uint8 activations), which TensorRT cannot parse."""
    onnx.save(_model(), str(tmp_path / "m.onnx"))
    calib = {"x": np.random.default_rng(1).normal(size=(8, 3, 8, 8)).astype(np.float32)}
    specs = model_input_specs(_model())
    qdq = onnx.load(str(quantize_qdq(tmp_path / "m.onnx", specs, calib, tmp_path / "trt" / "int8.onnx").path))
    assert any(n.op_type == "QuantizeLinear" for n in qdq.graph.node)
    assert check_onnx(qdq).ok, check_onnx(qdq).summary()
    built = get_backend("onnxruntime").build(
        tmp_path / "m.onnx", tmp_path / "q", "int8", calib=calib, int8=Int8Options("all", "minmax")
    )
    if built.metadata["quantization"]["scheme"]["activations"] == "uint8":
        assert not check_onnx(onnx.load(str(tmp_path / "q" / "model.int8.onnx"))).ok


def test_asymmetric_zero_point_is_rejected():
    zero_point = numpy_helper.from_array(np.array(3, np.int8), "zp")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    model = _model(
        [helper.make_node("QuantizeLinear", ["y", "scale", "zp"], ["q"], name="quant")], outputs=("q",)
    )
    model.graph.initializer.extend([zero_point, scale])
    assert "zero point must be 0" in check_onnx(model).unsupported[0].reason


def test_profile_resolution_without_tensorrt():
    specs = model_input_specs(_model())
    assert resolve_profile(specs, {}, "m.onnx")["x"] == ((1, 3, 8, 8), (1, 3, 8, 8), (32, 3, 8, 8))
    given = {"x": ((1, 3, 8, 8), (8, 3, 8, 8), (16, 3, 8, 8))}
    assert resolve_profile(specs, given, "m.onnx") == given
    static = model_input_specs(_model(batch=4))
    assert resolve_profile(static, {}, "m.onnx")["x"] == ((4, 3, 8, 8),) * 3
    with pytest.raises(UsageError, match="does not fit"):
        resolve_profile(specs, {"x": ((1, 3, 9, 9),) * 3}, "m.onnx")


def test_cli_check_only_works_without_tensorrt(tmp_path, capsys):
    onnx.save(_model(), str(tmp_path / "ok.onnx"))
    bad = _model([helper.make_node("Unique", ["y"], ["u"], name="dedupe")], outputs=("u",))
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    assert main(["build", str(tmp_path / "ok.onnx"), "--backend", "tensorrt", "--check-only"]) is None
    out = capsys.readouterr().out
    assert "all 2 nodes are in the TensorRT" in out and f"TensorRT {NEWEST} GA" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["build", str(tmp_path / "bad.onnx"), "--backend", "tensorrt", "--dry-run", "--json"])
    assert exit_info.value.code == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is False and payload["unsupported"][0]["op_type"] == "Unique"
    main(
        ["build", str(tmp_path / "ok.onnx"), "--backend", "tensorrt", "--check-only", "--trt-version", "8.6"]
    )
    assert "TensorRT 8.6 GA" in capsys.readouterr().out


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown when TensorRT is missing")
def test_build_without_tensorrt_exits_2_with_a_clear_message(tmp_path, capsys):
    onnx.save(_model(), str(tmp_path / "m.onnx"))
    with pytest.raises(SystemExit) as exit_info:
        main(["build", str(tmp_path / "m.onnx"), "--backend", "tensorrt", "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "TensorRT is not installed" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_build_and_validate_on_gpu(tmp_path, precision):
    pytest.importorskip("tensorrt")
    from deploysparse.validate import validate

    onnx.save(_model(), str(tmp_path / "m.onnx"))
    data = {"x": np.random.default_rng(2).normal(size=(64, 3, 8, 8)).astype(np.float32)}
    backend = get_backend("tensorrt")
    result = backend.build(
        tmp_path / "m.onnx", tmp_path / "out", precision, calib=data if precision == "int8" else None
    )
    meta = json.loads((tmp_path / "out" / "model.engine.json").read_text())
    assert meta["precision"] == precision and meta["version"] and meta["source_sha256"]
    assert meta["backend"] == "tensorrt" and meta["device"].startswith("GPU: ")
    tolerance = {"fp32": 1e-3, "fp16": 2e-2, "int8": 2e-1}[precision]
    report = validate(
        tmp_path / "m.onnx",
        result.artifact,
        data,
        backend="tensorrt",
        atol=tolerance,
        rtol=tolerance,
        min_cosine=0.99,
    )
    assert report.passed, report.failures
