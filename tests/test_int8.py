"""INT8 that fits its backend and says when it does not pay: the scheme per CPU, TensorRT's zero
points, layers kept float, opsets 11 and 12, digits agreement, and the not-faster finding.

Timing decisions are forced with a fake timer (never a timed assertion); accuracy figures hold on
any CPU because the artefact under test is built with every layer in int8 (deterministic per CPU).
"""

from __future__ import annotations

import contextlib
import json
import platform
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploysparse import api
from deploysparse.agreement import agreement
from deploysparse.backends import get_backend
from deploysparse.backends import quantize as quantize_module
from deploysparse.backends.onnxruntime.backend import OnnxRuntimeBackend
from deploysparse.backends.onnxruntime.build import quantize_qdq
from deploysparse.backends.onnxruntime.int8 import first_samples, split_held_out
from deploysparse.backends.quantize import (
    TENSORRT,
    CpuFeatures,
    Int8Options,
    QuantScheme,
    onnxruntime_cpu_scheme,
)
from deploysparse.backends.timing import Timer
from deploysparse.calibration import model_input_specs
from deploysparse.errors import UsageError

X86_VNNI = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
X86_AVX_VNNI = "flags\t\t: fpu sse2 avx2 avx_vnni\n"
X86_AMX = "flags\t\t: fpu sse2 avx2 avx512f amx_tile amx_int8\n"
X86_AVX2 = "flags\t\t: fpu sse2 avx2 fma\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 atomics asimddp i8mm\n"


# ---- the scheme per CPU (fake /proc/cpuinfo) --------------------------------------------------------


@pytest.mark.parametrize(
    ("cpuinfo", "machine", "activations", "reduce_range", "flag"),
    [
        (X86_VNNI, "x86_64", "uint8", False, "avx512_vnni"),
        (X86_AVX_VNNI, "x86_64", "uint8", False, "avx_vnni"),
        (X86_AMX, "AMD64", "uint8", False, "amx_int8"),
        (X86_AVX2, "x86_64", "uint8", True, "without VNNI"),
        ("", "riscv64", "uint8", True, "riscv64"),
    ],
)
def test_the_cpu_decides_the_scheme(cpuinfo, machine, activations, reduce_range, flag) -> None:
    choice = onnxruntime_cpu_scheme(CpuFeatures.parse(cpuinfo, machine))
    assert len(choice.candidates) == 1
    scheme = choice.candidates[0]
    assert (scheme.activations, scheme.reduce_range, scheme.per_channel, scheme.name) == (
        activations,
        reduce_range,
        True,
        "U8S8",
    )
    assert flag in choice.reason


def test_arm_times_s8s8_against_u8s8() -> None:
    features = CpuFeatures.parse(ARM, "aarch64")
    choice = onnxruntime_cpu_scheme(features)
    assert [s.name for s in choice.candidates] == ["S8S8", "U8S8"]
    assert choice.candidates[0].symmetric and not any(s.reduce_range for s in choice.candidates)
    assert "I8MM" in choice.reason and features.int8_flags() == ["asimddp", "i8mm"]


def test_cpu_features_are_read_from_proc_cpuinfo(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "cpuinfo").write_text(X86_AVX2 + "\nflags\t\t: avx512_vnni\n")  # the first line counts
    monkeypatch.setattr(quantize_module, "CPUINFO", tmp_path / "cpuinfo")
    monkeypatch.setattr(quantize_module.platform, "machine", lambda: "x86_64")
    features = CpuFeatures.of_this_machine()
    assert not features.vnni and features.int8_flags() == ["avx2"]
    monkeypatch.setattr(quantize_module, "CPUINFO", tmp_path / "missing")
    assert CpuFeatures.of_this_machine().flags == frozenset()


def test_a_scheme_refuses_what_no_runtime_runs() -> None:
    with pytest.raises(ValueError, match="zero point"):
        QuantScheme(activations="uint8", symmetric=True)
    with pytest.raises(ValueError, match="calibration"):
        QuantScheme(calibration="kl")
    assert TENSORRT.describe() == "S8S8 QDQ, zero point 0, per-channel 8-bit weights, minmax calibration"


# ---- small models ------------------------------------------------------------------------------------


def _classifier(path: Path, seed: int = 0) -> Path:
    """Conv(3->16)-Relu-Conv(16->16)-Relu-GlobalAveragePool-Gemm on 3x12x12, dynamic batch."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (16,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (16, 16, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, (16,)).astype(np.float32), "b2"),
        numpy_helper.from_array(rng.normal(0, 0.3, (10, 16)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _data(samples: int = 40, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((samples, 3, 12, 12)).astype(np.float32)}


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _weight_dequantizers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Conv/Gemm node name -> the DequantizeLinear feeding its weight (input 1)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    return {
        node.name: producer[node.input[1]]
        for node in model.graph.node
        if node.op_type in ("Conv", "Gemm")
        and producer.get(node.input[1]) is not None
        and producer[node.input[1]].op_type == "DequantizeLinear"
    }


@contextlib.contextmanager
def _cpu(monkeypatch, tmp_path: Path, cpuinfo: str, machine: str = "x86_64") -> Iterator[None]:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(quantize_module, "CPUINFO", tmp_path / "cpuinfo")
    monkeypatch.setattr(quantize_module.platform, "machine", lambda: machine)
    yield


class _FakeTimer(Timer):
    """Times nothing: a model's latency is looked up by the words in its file name."""

    def __init__(self, backend, batch: int, latency: Mapping[str, float]) -> None:
        super().__init__(backend, batch)
        self.latency = latency

    def interleaved_ms(self, models: Sequence, feeds=None, shapes=None, rounds=0, per_round=1) -> list[float]:
        return [next((ms for word, ms in self.latency.items() if word in Path(m).name), 2.0) for m in models]


def _fake_timer(monkeypatch, **latency: float) -> None:
    """Every interleaved timing of the ONNX Runtime backend reads `latency` (file-name word -> ms;
    the fp32 model is the build's `source.onnx`)."""
    words = {word.replace("_", "-"): ms for word, ms in latency.items()}
    monkeypatch.setattr(
        OnnxRuntimeBackend, "timer", lambda self, batch, threads=None: _FakeTimer(self, batch, words)
    )


# ---- TensorRT's scheme: zero point 0 everywhere ---------------------------------------------------


def test_tensorrt_scheme_has_every_zero_point_zero_and_per_channel_weights(tmp_path: Path) -> None:
    source = _classifier(tmp_path / "m.onnx")
    specs = model_input_specs(onnx.load(str(source)))
    quantized = quantize_qdq(source, specs, _data(), tmp_path / "trt" / "int8.onnx")
    assert quantized.scheme == TENSORRT
    model = onnx.load(str(quantized.path))
    values = _initializers(model)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) >= 6
    for node in qdq:
        assert len(node.input) == 3, f"{node.name} has no zero point: its type would default to uint8"
        zero = values[node.input[2]]
        assert not zero.any(), (node.name, zero)
        # int8 everywhere but the biases, which are int32 (scale: input scale x weight scale)
        assert zero.dtype == (np.int32 if values.get(node.input[0], zero).dtype == np.int32 else np.int8)
    for name, dq in _weight_dequantizers(model).items():
        channels = values[dq.input[0]].shape[0]
        assert values[dq.input[1]].shape == (channels,), f"{name}: weights must be scaled per output channel"
    x = _data(8, seed=5)
    fp32 = get_backend("onnxruntime").run(source, x)
    assert agreement(fp32, get_backend("onnxruntime").run(quantized.path, x)).cosine > 0.99


# ---- ONNX Runtime on x86: U8S8, 8-bit weights with VNNI, 7 without ------------------------------------


@pytest.mark.parametrize(("cpuinfo", "reduce_range"), [(X86_VNNI, False), (X86_AVX2, True)])
def test_x86_build_is_u8s8_and_keeps_8_bit_weights_only_with_vnni(
    tmp_path: Path, monkeypatch, cpuinfo: str, reduce_range: bool
) -> None:
    source = _classifier(tmp_path / "m.onnx")
    with _cpu(monkeypatch, tmp_path, cpuinfo):
        built = get_backend("onnxruntime").build(
            source, tmp_path / "out", "int8", calib=_data(), int8=Int8Options("all", "minmax")
        )
    meta = built.metadata["quantization"]
    assert meta["scheme"]["name"] == "U8S8" and meta["scheme"]["reduce_range"] is reduce_range
    assert ("without VNNI" in meta["reason"]) is reduce_range
    assert meta["cpu"]["machine"] == "x86_64"
    model = onnx.load(str(tmp_path / "out" / "model.int8.onnx"))
    values = _initializers(model)
    activation_zero_points = [
        values[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) == 3
    ]
    assert activation_zero_points and all(z.dtype == np.uint8 for z in activation_zero_points)
    weights = _weight_dequantizers(model)
    assert set(weights) == {"conv1", "conv2", "fc"}
    largest = max(int(np.abs(values[dq.input[0]].astype(np.int32)).max()) for dq in weights.values())
    # symmetric per-channel weights put each channel's largest |w| at the top of the range
    assert largest == (64 if reduce_range else 127), largest


# ---- ARM: S8S8 and U8S8 both built and timed, the faster kept ------------------------------------------


@pytest.mark.parametrize(("faster", "zero_point_type"), [("S8S8", np.int8), ("U8S8", np.uint8)])
def test_arm_keeps_the_scheme_that_timed_faster(tmp_path: Path, monkeypatch, faster, zero_point_type) -> None:
    slower = "U8S8" if faster == "S8S8" else "S8S8"
    _fake_timer(monkeypatch, **{faster: 1.0, slower: 2.0, "source": 3.0, "int8": 1.0})
    source = _classifier(tmp_path / "m.onnx")
    with _cpu(monkeypatch, tmp_path, ARM, "aarch64"):
        built = get_backend("onnxruntime").build(
            source, tmp_path / "out", "int8", calib=_data(), int8=Int8Options("all", "minmax")
        )
    meta = built.metadata["quantization"]
    assert meta["scheme"]["name"] == faster and meta["scheme_latency_ms"] == {faster: 1.0, slower: 2.0}
    assert meta["scheme"]["symmetric"] is (faster == "S8S8") and meta["scheme"]["reduce_range"] is False
    model = onnx.load(str(tmp_path / "out" / "model.int8.onnx"))
    values = _initializers(model)
    activations = [values[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert activations and all(z.dtype == zero_point_type for z in activations)
    if faster == "S8S8":
        assert not any(z.any() for z in activations)  # symmetric: zero point 0


# ---- layers kept float: excluded nodes are honoured ---------------------------------------------------


def test_excluded_nodes_stay_float(tmp_path: Path) -> None:
    source = _classifier(tmp_path / "m.onnx")
    specs = model_input_specs(onnx.load(str(source)))
    scheme = QuantScheme(excluded_nodes=("conv2",))
    model = onnx.load(str(quantize_qdq(source, specs, _data(), tmp_path / "q" / "int8.onnx", scheme).path))
    weights = _weight_dequantizers(model)
    assert "conv1" in weights and "conv2" not in weights
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    assert conv2.input[1] in _initializers(model) and _initializers(model)[conv2.input[1]].dtype == np.float32


def test_auto_keeps_float_the_layers_measured_slower(tmp_path: Path, monkeypatch) -> None:
    """The profile says conv1 runs slower in int8; the (fake) timer says the model with conv1 in float
    is the fastest: it is the artefact, and the metadata says which layer stayed float and why."""
    from deploysparse.profiling import LayerProfile, LayerTime

    def profile(self, models, batch=1, warmup=5, runs=20, threads=None, seed=0):
        slow = {
            "fp32": {"conv1": 0.1, "conv2": 0.5, "fc": 0.01},
            "int8": {"conv1": 0.3, "conv2": 0.1, "fc": 0.01},
        }
        return {
            label: LayerProfile(
                str(path), batch, runs, [LayerTime(n, "Conv", ms) for n, ms in slow[label].items()]
            )
            for label, path in models.items()
        }

    monkeypatch.setattr(OnnxRuntimeBackend, "profile", profile)
    _fake_timer(monkeypatch, source=3.0, int8_all=2.0, without_slower=1.0, profitable_only=1.5)
    source = _classifier(tmp_path / "m.onnx")
    built = get_backend("onnxruntime").build(
        source, tmp_path / "out", "int8", calib=_data(), int8=Int8Options("auto", "minmax")
    )
    layers = built.metadata["quantization"]["layers"]
    assert layers["kept"] == "without-slower"
    assert [(f["node"], f["reason"]) for f in layers["float"]] == [("conv1", "slower in int8")]
    assert {v["name"] for v in layers["variants"]} == {"all", "without-slower", "profitable-only"}
    weights = _weight_dequantizers(onnx.load(str(tmp_path / "out" / "model.int8.onnx")))
    assert "conv1" not in weights and "conv2" in weights
    assert built.metadata["quantization"]["latency"]["int8_ms"] == 1.0


def test_auto_publishes_fp32_when_no_int8_model_is_faster(tmp_path: Path, monkeypatch) -> None:
    """Mixed precision by measurement at its limit: every int8 model timed slower than fp32, so auto
    keeps every layer float; the published model holds no quantise/dequantise step, computes what the
    source computes, and the finding says why."""
    _fake_timer(monkeypatch, source=1.0, int8=2.0)
    source = _classifier(tmp_path / "m.onnx")
    built = get_backend("onnxruntime").build(
        source, tmp_path / "out", "int8", calib=_data(), int8=Int8Options("auto", "minmax")
    )
    meta = built.metadata["quantization"]
    published = onnx.load(str(tmp_path / "out" / "model.int8.onnx"))
    assert not {n.op_type for n in published.graph.node} & {"QuantizeLinear", "DequantizeLinear"}
    assert meta["layers"]["kept"] == "none" and meta["layers"]["quantized"] == 0
    assert {f["node"] for f in meta["layers"]["float"]} >= {"conv1", "conv2"}
    assert meta["faster"] is False and meta["latency"]["int8_ms"] == meta["latency"]["fp32_ms"] == 1.0
    assert meta["finding"].startswith("int8 does not pay for this model on this CPU")
    x = np.random.default_rng(7).standard_normal((4, *_data()["x"].shape[1:])).astype(np.float32)
    backend = get_backend("onnxruntime")
    expected, got = backend.run(source, {"x": x}), backend.run(built.artifact, {"x": x})
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5)


# ---- int8 not faster: said in one line, in the metadata, the CLI and a run's report ------------------


def test_int8_not_faster_is_said_in_the_metadata_and_by_build(tmp_path: Path, monkeypatch, cli) -> None:
    _fake_timer(monkeypatch, source=1.0, int8=2.0)
    source = _classifier(tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", _data()["x"])
    result = cli(
        "build",
        source,
        "--precision",
        "int8",
        "--calib",
        tmp_path / "calib.npy",
        "--int8-layers",
        "all",
        "--calib-method",
        "minmax",
        "-o",
        tmp_path / "out",
    )
    assert result.code == 0, result.err
    meta = json.loads((tmp_path / "out" / "model.optimized.onnx.json").read_text())["quantization"]
    assert meta["faster"] is False and meta["latency"] == {
        "batch": 1,
        "threads": meta["latency"]["threads"],
        "fp32_ms": 1.0,
        "int8_ms": 2.0,
    }
    finding = meta["finding"]
    assert finding.startswith("int8 is not faster than fp32 on this CPU: 2.000 ms against 1.000 ms")
    assert finding in result.out and "fp32 1.000 ms, int8 2.000 ms" in result.out
    assert "int8 scheme: U8S8" in result.out or platform.machine() not in ("x86_64", "AMD64")


@pytest.mark.slow  # a whole run: prune, build, validate, bench
def test_a_run_reports_int8_not_faster_as_a_finding(tmp_path: Path, monkeypatch, cli) -> None:
    _fake_timer(monkeypatch, source=1.0, int8=2.0)
    source = _classifier(tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", _data()["x"])
    recipe = tmp_path / "int8.yaml"
    recipe.write_text(
        "name: int8\nprune: {criterion: [dead], round_to: 1}\n"
        "build: {backend: onnxruntime, precision: int8, int8_layers: all, calibration_method: minmax}\n"
        "validate: {atol: null, rtol: null, min_cosine: 0.9, min_top1_agreement: 0.5}\n"
        "bench: {batches: [1], warmup: 1, iters: 3, repeats: 1, per_layer: false}\n"
    )
    result = cli("run", recipe, "--model", source, "--calib", tmp_path / "calib.npy", "-o", tmp_path / "out")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    finding = report["quantization"]["finding"]
    assert finding.startswith("int8 is not faster than fp32") and finding in report["warnings"]
    assert finding in " ".join(result.out.split())  # rich wraps long lines
    assert report["quantization"]["faster"] is False
    assert report["latency"]["compact_fp32"] and report["latency"]["compact"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert 'id="quantization"' in page and "not faster" in page and "precision-split" in page


# ---- held-out split ---------------------------------------------------------------------------------


def test_every_fifth_sample_is_held_out_in_whole_static_batches() -> None:
    feeds = {"x": np.arange(100, dtype=np.float32).reshape(100, 1)}
    specs = model_input_specs(_static_batch_model(1))
    calib, held = split_held_out(feeds, specs)
    assert held["x"][:, 0].tolist() == list(range(4, 100, 5)) and len(calib["x"]) == 80
    static = model_input_specs(_static_batch_model(8))
    _, held = split_held_out(feeds, static)
    assert len(held["x"]) == 16  # 20 held out, whole batches of 8
    calib, held = split_held_out({"x": feeds["x"][:30]}, specs)
    assert held == {} and len(calib["x"]) == 30  # 6 held out judge nothing: all calibrate


def test_judge_inputs_are_capped_in_whole_static_batches() -> None:
    feeds = {"x": np.arange(100, dtype=np.float32).reshape(100, 1)}
    first = first_samples(feeds, model_input_specs(_static_batch_model(8)), limit=30)
    assert first["x"][:, 0].tolist() == list(range(24))  # 30 allowed, whole batches of 8
    assert first_samples(feeds, model_input_specs(_static_batch_model(1)), limit=1000)["x"].shape == (100, 1)
    assert first_samples({"x": feeds["x"][:5]}, model_input_specs(_static_batch_model(8)), limit=30) == {}


def _static_batch_model(batch: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# ---- opsets 11 and 12 (torch's legacy exporter, as Paddle and older converters write them) ----------


@pytest.mark.parametrize(("arch", "opset"), [("mobilenet_v2", 11), ("se_hardswish", 12)])
def test_int8_builds_at_opsets_11_and_12_with_per_channel_weights(
    exported, tmp_path: Path, arch, opset
) -> None:
    from tests.archs import ARCHS

    source = exported(arch, "legacy", opset=opset)
    assert onnx.load(str(source)).opset_import[0].version == opset
    data = {
        "input": np.random.default_rng(3).standard_normal(ARCHS[arch].example(16).shape).astype(np.float32)
    }
    built = get_backend("onnxruntime").build(
        source, tmp_path / "out", "int8", calib=data, int8=Int8Options("all", "minmax")
    )
    meta = built.metadata["quantization"]
    assert meta["opset"] == {
        "source": opset,
        "quantized": 13,
        "per_channel": True,
        "note": f"opset {opset} upgraded to 13 for per-channel weights (ONNX version converter)",
    }
    model = onnx.load(str(tmp_path / "out" / "model.int8.onnx"))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 13
    values = _initializers(model)
    for name, dq in _weight_dequantizers(model).items():
        assert values[dq.input[1]].shape == (values[dq.input[0]].shape[0],), name
    backend = get_backend("onnxruntime")
    x = {"input": data["input"][:4]}
    assert agreement(backend.run(source, x), backend.run(built.artifact, x)).cosine > 0.95


def test_int8_at_opset_12_quantises_per_tensor_when_the_converter_cannot_upgrade(
    exported, tmp_path: Path, monkeypatch
) -> None:
    from onnx import version_converter

    def refuse(model, target):
        raise RuntimeError("no adapter for this op")

    monkeypatch.setattr(version_converter, "convert_version", refuse)
    source = exported("resnet_basic", "legacy", opset=12)
    data = {"input": np.random.default_rng(4).standard_normal((16, 3, 16, 16)).astype(np.float32)}
    built = get_backend("onnxruntime").build(
        source, tmp_path / "out", "int8", calib=data, int8=Int8Options("all", "minmax")
    )
    meta = built.metadata["quantization"]
    assert meta["opset"]["quantized"] == 12 and meta["opset"]["per_channel"] is False
    assert meta["opset"]["note"].startswith(
        "per-tensor weights: opset 12 has no per-channel DequantizeLinear"
    )
    assert "no adapter for this op" in meta["opset"]["note"] and meta["scheme"]["per_channel"] is False
    model = onnx.load(str(tmp_path / "out" / "model.int8.onnx"))
    values = _initializers(model)
    weights = _weight_dequantizers(model)
    assert weights and all(values[dq.input[1]].ndim == 0 for dq in weights.values())
    assert not any(
        a.name == "axis" for n in model.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute
    )


# ---- digits-trained model: top-1 agreement with fp32 ------------------------------------------------


@pytest.mark.slow  # a torch export and an int8 build with every calibration method
def test_int8_agrees_with_fp32_on_the_digits_model(tmp_path: Path) -> None:
    from deploysparse.frontend.model_source import resolve_model
    from deploysparse.zoo.digits import calibration_set, validation_set

    source = resolve_model(
        "deploysparse.zoo.digits:digits_model", input_shape=[1, 1, 16, 16], workdir=tmp_path / "export"
    ).onnx_path
    name = model_input_specs(onnx.load(str(source)))[0].name
    built = get_backend("onnxruntime").build(
        source, tmp_path / "out", "int8", calib={name: calibration_set(256)}, int8=Int8Options("all", "auto")
    )
    calibration = built.metadata["quantization"]["calibration"]
    assert calibration["held_out"] == 51 and set(calibration["agreement"]) == {
        "minmax",
        "percentile",
        "entropy",
    }
    images, labels = validation_set()
    backend = get_backend("onnxruntime")
    fp32 = backend.run(source, {name: images})
    int8 = backend.run(built.artifact, {name: images})
    assert agreement(fp32, int8).top1 >= 0.99
    output = next(iter(fp32))
    assert np.mean(int8[output].argmax(1) == labels) >= np.mean(fp32[output].argmax(1) == labels) - 0.01


def test_judge_data_replaces_the_held_out_split_and_every_calibration_sample_calibrates(
    tmp_path: Path,
) -> None:
    """With judge inputs (what `run` passes: its validation data) the choices are judged on them and
    all calibration samples calibrate; the agreement recorded is the judged model's on those inputs,
    recomputed here. Fewer than MIN_HELD_OUT judge inputs fall back to the held-out split."""
    source = _classifier(tmp_path / "m.onnx")
    judge = _data(samples=30, seed=7)
    built = get_backend("onnxruntime").build(
        source,
        tmp_path / "out",
        "int8",
        calib=_data(samples=40),
        int8=Int8Options("all", "auto", judge=judge),
    )
    quantization = built.metadata["quantization"]
    calibration = quantization["calibration"]
    assert (calibration["samples"], calibration["held_out"]) == (40, 30)
    assert calibration["chosen_by"] == "agreement with fp32 on 30 validation samples"
    backend = get_backend("onnxruntime")
    int8 = backend.run(tmp_path / "out" / "model.int8.onnx", judge)
    recorded = quantization["agreement"]
    assert recorded["top1_agreement"] == agreement(backend.run(source, judge), int8).top1
    without = get_backend("onnxruntime").build(
        source, tmp_path / "split", "int8", calib=_data(samples=40), int8=Int8Options("all", "auto")
    )
    split = without.metadata["quantization"]["calibration"]
    assert (split["samples"], split["held_out"]) == (40, 0)  # 8 held out would judge nothing
    few = get_backend("onnxruntime").build(
        source,
        tmp_path / "few",
        "int8",
        calib=_data(samples=60),
        int8=Int8Options("all", "auto", judge=_data(samples=5, seed=7)),
    )
    fallback = few.metadata["quantization"]["calibration"]  # 5 judge nothing: 12 of 60 held out instead
    assert (fallback["samples"], fallback["held_out"]) == (48, 12)
    assert fallback["chosen_by"] == "agreement with fp32 on 12 held-out calibration samples"


def test_build_judges_on_judge_data_and_never_writes_over_it(tmp_path: Path, cli) -> None:
    source = _classifier(tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", _data()["x"])
    np.save(tmp_path / "val.npy", _data(samples=24, seed=3)["x"])
    args = ["build", source, "--precision", "int8", "--calib", tmp_path / "calib.npy", "--int8-layers", "all"]
    result = cli(*args, "--judge-data", tmp_path / "val.npy", "-o", tmp_path / "out")
    assert result.code == 0, result.err
    metadata = json.loads((tmp_path / "out" / "model.optimized.onnx.json").read_text())
    assert (
        metadata["quantization"]["calibration"]["chosen_by"] == "agreement with fp32 on 24 validation samples"
    )
    target = tmp_path / "guarded"
    target.mkdir()
    judge = target / "model.optimized.onnx"  # where the build would write its artefact
    with judge.open("wb") as handle:
        np.save(handle, _data(samples=24, seed=3)["x"])
    before = judge.read_bytes()
    result = cli(*args, "--judge-data", judge, "-o", target)
    assert result.code == 2 and "--judge-data" in result.err and judge.read_bytes() == before
    result = cli("build", source, "--judge-data", tmp_path / "val.npy", "-o", tmp_path / "fp32")
    assert result.code == 2 and "--judge-data applies to --precision int8" in result.err


def test_a_run_judges_the_int8_choices_on_its_validation_data(tmp_path: Path, cli) -> None:
    source = _classifier(tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", _data()["x"])
    np.save(tmp_path / "val.npy", _data(samples=24, seed=3)["x"])
    recipe = tmp_path / "int8.yaml"
    recipe.write_text(
        "name: int8\nprune: {criterion: [dead], round_to: 1}\n"
        "build: {backend: onnxruntime, precision: int8, int8_layers: all, calibration_method: auto}\n"
        "validate: {atol: null, rtol: null, min_cosine: 0.9, min_top1_agreement: 0.5}\n"
        "bench: {batches: [1], warmup: 1, iters: 3, repeats: 1, per_layer: false}\n"
    )
    args = ["--model", source, "--calib", tmp_path / "calib.npy", "--data", tmp_path / "val.npy"]
    result = cli("run", recipe, *args, "-o", tmp_path / "out")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    quantization = report["quantization"]
    assert quantization["calibration_chosen_by"] == "agreement with fp32 on 24 validation samples"
    assert quantization["build"]["calibration"]["samples"] == 40  # every calibration sample calibrated


def test_an_already_quantised_model_is_refused_naming_its_int8_ops(tmp_path: Path, cli) -> None:
    """ddddocr ships its OCR model quantised: quantising it again failed inside ONNX Runtime's
    quantiser with a KeyError; it is bad input for an int8 build, one line naming the file and why."""
    source = _classifier(tmp_path / "m.onnx")
    specs = model_input_specs(onnx.load(str(source)))
    qdq = quantize_qdq(source, specs, _data(), tmp_path / "q" / "int8.onnx").path
    np.save(tmp_path / "calib.npy", next(iter(_data().values())))
    result = cli(
        "build", qdq, "--precision", "int8", "--calib", tmp_path / "calib.npy", "-o", tmp_path / "out"
    )
    assert result.code == 2, result.err
    assert f"{qdq}: already quantised (holds DequantizeLinear, QuantizeLinear)" in result.err
    assert "--precision fp32" in result.err and not (tmp_path / "out" / "model.int8.onnx").exists()
    assert cli("build", qdq, "--precision", "fp32", "-o", tmp_path / "fp32").code == 0


def test_pruning_a_quantised_model_says_to_prune_its_float_original(tmp_path: Path) -> None:
    """A dynamically quantised model (ddddocr's OCR model ships so) computes with ConvInteger and
    MatMulInteger: no float filters to rank, and the refusal says why."""
    from onnxruntime.quantization import quantize_dynamic

    source = _classifier(tmp_path / "m.onnx")
    quantize_dynamic(str(source), str(tmp_path / "dynamic.onnx"))
    with pytest.raises(
        UsageError, match=r"nothing to prune \(the model is already quantised: prune the float"
    ):
        api.prune(tmp_path / "dynamic.onnx", criterion="dead")
