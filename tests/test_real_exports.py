"""Models that look like real exports (issue 22): dynamic height and width, a static batch of 1,
opsets 11 and 12 from torch's legacy exporter, a LayerNorm ONNX Runtime fuses at opset 12; every
command that runs a model works on them with at most --input-shape, and says what it did.
(tests/test_ppocr_wheel.py runs the real PaddleOCR exports from their wheel.)"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from deploysparse import api
from deploysparse.backends.onnxruntime import int8 as ort_int8
from deploysparse.errors import InternalError
from deploysparse.modelio import load_model
from tests.exporting import INPUT_NAME, export, run


class Detector(nn.Module):
    """A fully convolutional net (a DB text detector's shape: any H and W) with two dead filters:
    BN scale 0 on channels 1 and 5 of the first block."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 2, 1),
        )  # fmt: skip
        with torch.no_grad():
            for bn in (self.body[1], self.body[4]):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
            self.body[1].weight[[1, 5]] = 0.0
            self.body[1].bias[[1, 5]] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Recogniser(nn.Module):
    """A conv stem and a LayerNorm over tokens (SVTR's pattern in PP-OCRv4's recogniser): the legacy
    exporter writes the LayerNorm as ReduceMean/Sub/Pow/Sqrt/Div below opset 17, which ONNX Runtime
    fuses into an op that opset lacks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        n, c, h, w = y.shape
        tokens = self.norm(y.flatten(2).transpose(1, 2))
        return self.head(torch.relu(tokens.transpose(1, 2).reshape(n, c, h, w)))


def _export(
    tmp_path: Path, net: nn.Module, opset: int, *, dynamic_batch: bool = True, hw: bool = True
) -> Path:
    torch.manual_seed(0)
    return export(
        net.eval(),
        torch.randn(1, 3, 16, 24),
        tmp_path / f"{type(net).__name__.lower()}{opset}.onnx",
        exporter="legacy",
        keep_bn=True,
        dynamic_batch=dynamic_batch,
        opset=opset,
        dynamic_spatial=hw,
    )


def _data(path: Path, shape: tuple[int, ...], seed: int = 0) -> Path:
    np.save(path, np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    return path


def _recipe(tmp_path: Path, extra: str = "") -> Path:
    """The packaged CPU recipe's settings with a short benchmark that still asks for batch 4."""
    path = tmp_path / "fast.yaml"
    path.write_text(
        "# a short benchmark\n" + extra + "prune: {criterion: [dead], round_to: 1}\n"
        "validate: {atol: 1.0e-4, rtol: 1.0e-3, min_cosine: 0.9999}\n"
        "bench: {batches: [1, 4], warmup: 1, iters: 3, repeats: 1}\n"
    )
    return path


def _fresh(shape: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    return {INPUT_NAME: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


@pytest.mark.slow  # three runs
@pytest.mark.parametrize("opset", [11, 12])
def test_a_dynamic_hw_model_runs_at_the_shape_given_or_the_datas(tmp_path: Path, cli, opset: int) -> None:
    model = _export(tmp_path, Detector(), opset)
    assert [o.version for o in onnx.load(str(model)).opset_import] == [opset]
    assert cli("bench", model, "--iters", "2").code == 2  # dynamic H/W and nothing gives them
    bench = cli(
        "bench", model, "--input-shape", f"{INPUT_NAME}:1x3x24x32", "--batch", "1,2", "--iters", "2", "--json"
    )
    payload = json.loads(bench.out)
    assert payload["input_shapes"] == {"shapes": {INPUT_NAME: [1, 3, 24, 32]}, "source": "--input-shape"}
    assert [r["batch"] for r in payload["results"]] == [1, 2]
    assert cli("build", model, "-o", tmp_path / "built").code == 0  # ONNX Runtime keeps the dims dynamic

    calib = _data(tmp_path / "calib.npy", (6, 3, 24, 32))
    ran = cli("run", _recipe(tmp_path), "--model", model, "--calib", calib, "-o", tmp_path / "run")
    assert ran.code == 0, ran.err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert (
        report["model"]["inputs"] == {INPUT_NAME: [1, 3, 24, 32]}
        and report["model"]["shape_source"] == "data"
    )
    assert report["pruning"]["dead"]["found"] == report["pruning"]["dead"]["removed"] == 2
    assert [p["batch"] for p in report["latency"]["compact"]] == [1, 4] and report["latency"][
        "skipped_batches"
    ] == []
    assert report["layers"]["batch"] == 4
    # the compact model keeps the dynamic dims and answers as the original at another size
    compact = tmp_path / "run" / "compact.onnx"
    feeds = _fresh((2, 3, 40, 16), seed=7)
    want, got = run(model, feeds)[0], run(compact, feeds)[0]
    assert np.abs(want - got).max() <= 1e-5 * np.abs(want).max()

    given = cli(
        "run",
        _recipe(tmp_path),
        "--model",
        model,
        "--calib",
        calib,
        "--input-shape",
        "1x3x16x16",
        "-o",
        tmp_path / "run2",
    )
    assert given.code == 0, given.err
    report = json.loads((tmp_path / "run2" / "report.json").read_text())
    assert report["model"]["inputs"] == {INPUT_NAME: [1, 3, 16, 16]}
    assert report["model"]["shape_source"] == "--input-shape"
    recipe_shape = _recipe(tmp_path, extra="input_shape: 1x3x8x40\n")
    assert cli("run", recipe_shape, "--model", model, "--calib", calib, "-o", tmp_path / "run3").code == 0
    report = json.loads((tmp_path / "run3" / "report.json").read_text())
    assert report["model"] == {
        **report["model"],
        "inputs": {INPUT_NAME: [1, 3, 8, 40]},
        "shape_source": "the recipe's input_shape",
    }


def test_a_static_batch_of_one_runs_the_packaged_recipe_and_names_what_it_skipped(
    tmp_path: Path, cli
) -> None:
    model = _export(tmp_path, Detector(), 11, dynamic_batch=False, hw=False)
    assert load_model(model).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    calib = _data(tmp_path / "calib.npy", (4, 3, 16, 24))
    ran = cli("run", "x86-cpu-onnxruntime", "--model", model, "--calib", calib, "-o", tmp_path / "run")
    assert ran.code == 0, ran.err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [p["batch"] for p in report["latency"]["compact"]] == [1]
    assert report["latency"]["skipped_batches"] == [
        {"batch": 8, "reason": f"input '{INPUT_NAME}' has a static batch of 1"}
    ]
    assert report["layers"]["batch"] == 1 and report["validation"]["passed"]
    # two dead filters in a group of 8 channels: smaller than 16, so not rounded, and both go
    assert report["pruning"]["dead"]["message"] == "2 dead found, 2 removed"
    bench = cli("bench", model, "--batch", "1,8", "--iters", "2")
    assert bench.code == 0 and f"skipped batch 8: input '{INPUT_NAME}' has a static batch of 1" in bench.out


@pytest.mark.parametrize(("opset", "level"), [(12, "basic"), (17, "all")])
def test_a_layernorm_fused_past_the_models_opset_is_never_published(
    tmp_path: Path, cli, opset, level
) -> None:
    model = _export(tmp_path, Recogniser(), opset)
    built = cli("build", model, "-o", tmp_path / "built", "--json")
    assert built.code == 0, built.err
    metadata = json.loads(built.out)["metadata"]
    assert metadata["graph_optimization"]["level"] == level
    if level == "basic":
        assert "LayerNormalization with domain_version of 12" in metadata["graph_optimization"]["reason"]
    artefact = load_model(tmp_path / "built" / "model.optimized.onnx")  # the ONNX checker accepts it
    assert [o.version for o in artefact.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    feeds = _fresh((2, 3, 12, 20), seed=3)
    want, got = run(model, feeds)[0], run(artefact, feeds)[0]
    assert np.abs(want - got).max() <= 1e-5 * np.abs(want).max()


def test_a_model_ours_writes_wrong_is_an_internal_error_naming_no_temporary_file(
    tmp_path, cli, monkeypatch
) -> None:
    """ONNX Runtime's quantiser on an opset-12 model wrote DequantizeLinear with `axis`, which opset 12
    lacks: a model of ours the checker rejects is exit 1 with --debug, never 'bad input' naming the
    build's staging folder."""
    model = _export(tmp_path, Detector(), 12)
    calib = _data(tmp_path / "calib.npy", (4, 3, 16, 24))

    def quantize_wrongly(
        backend, source: Path, specs, feeds, work: Path, options, judge_feeds=None
    ) -> SimpleNamespace:
        bad = onnx.load(str(source))
        scale = onnx.numpy_helper.from_array(np.ones(3, np.float32), "scale")
        zero = onnx.numpy_helper.from_array(np.zeros(3, np.int8), "zero")
        codes = onnx.numpy_helper.from_array(np.ones((1, 3, 1, 1), np.int8), "codes")
        bad.graph.initializer.extend([scale, zero, codes])
        bad.graph.node.insert(
            0, onnx.helper.make_node("DequantizeLinear", ["codes", "scale", "zero"], ["deq"], axis=1)
        )
        target = work / "int8.onnx"
        onnx.save(bad, str(target))
        return SimpleNamespace(model=target, metadata={})

    monkeypatch.setattr(ort_int8, "build_int8", quantize_wrongly)
    result = cli("build", model, "--precision", "int8", "--calib", calib, "-o", tmp_path / "int8")
    assert result.code == 1
    assert "internal error in `deploysparse build`" in result.err and "fails the ONNX checker" in result.err
    assert "Unrecognized attribute: axis for operator DequantizeLinear" in result.err
    assert ".build-" not in result.err and str(model) in result.err
    assert not list((tmp_path / "int8").glob(".build-*"))
    with pytest.raises(InternalError):
        cli("--debug", "build", model, "--precision", "int8", "--calib", calib, "-o", tmp_path / "int8")


def test_near_zero_filters_put_back_by_rounding_leave_the_result_exact(tmp_path: Path) -> None:
    """Four exactly dead filters and one near-zero one in a group of 8, rounded to 4: the near-zero one
    is put back (the exact ones go first), so nothing inexact happens and nothing says so."""
    net = Detector()
    with torch.no_grad():
        bn = net.body[1]
        bn.weight[[1, 2, 3, 5]] = 0.0
        bn.bias[[1, 2, 3, 5]] = 0.0
        bn.weight[6], bn.bias[6] = 1e-7, 0.0  # |scale| under --dead-threshold: near-zero, not exact
    model = _export(tmp_path, net, 12, hw=False)
    rounded = api.prune(str(model), criterion="dead", round_to=4)
    assert (
        rounded.summary["dead"]["message"]
        == "5 dead found, 4 removed, 1 kept to hold multiples of 4 (`--round-to 1` removes all)"
    )
    assert rounded.summary["exact"] and "output_change" not in rounded.summary
    assert not any("not exact" in w for w in rounded.summary["warnings"])
    every = api.prune(str(model), criterion="dead", round_to=1)
    assert every.summary["dead"]["removed"] == 5 and not every.summary["exact"]
    assert (
        "1 near-zero filters removed (--dead-threshold): not exact, see output_change"
        in every.summary["warnings"]
    )
    for result in (rounded, every):
        feeds = _fresh((3, 3, 16, 24), seed=11)
        want, got = run(model, feeds)[0], run(result.model, feeds)[0]
        assert np.abs(want - got).max() <= 1e-4 * np.abs(want).max()


class Silent(nn.Module):
    """A detector that finds nothing in random pixels: sigmoid(x - 30) is below 1e-9 everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.mul_(0.1)
            self.conv.bias.fill_(-30.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


def test_validate_says_when_the_original_is_near_zero_and_asks_for_real_inputs(tmp_path: Path, cli) -> None:
    model = _export(tmp_path, Silent(), 12)
    data = _data(tmp_path / "val.npy", (4, 3, 16, 24))
    fp32 = cli("validate", model, model, "--data", data)
    assert fp32.code == 0  # judged element-wise: the copy is near zero too
    assert "cosine not judged (original near zero)" in fp32.out
    assert "validate with real inputs (--data)" in fp32.out
    int8 = cli("validate", model, model, "--data", data, "--precision", "int8", "--json")
    assert int8.code == 1  # nothing could be judged: never a pass
    report = json.loads(int8.out)
    assert report["outputs"][0]["reference_near_zero"] and report["warnings"] == []
    assert "cannot be judged on this data" in report["failures"][0]
    assert report["input_shapes"] == {"shapes": {INPUT_NAME: [1, 3, 16, 24]}, "source": "data"}
    wrong = cli("validate", model, model, "--data", data, "--input-shape", "1x3x32x32")
    assert wrong.code == 2 and "validation runs the data as it is" in wrong.err


def test_a_constant_read_with_rounding_noise_is_one_constant_and_a_border_is_not() -> None:
    """PP-OCRv4's recogniser: a dead filter's constant through HardSwish reads 1.3e-5 apart (ONNX
    Runtime's vectorised kernels round differently at different positions); zero padding changes a
    constant at the border by its whole size."""
    from deploysparse.graph.dead import _channel_values, _per_channel

    rng = np.random.default_rng(0)
    noisy = np.full((4, 2, 6, 6), -0.0513, np.float32) * (1 + 1.3e-5 * rng.uniform(-1, 1, (4, 2, 6, 6)))
    assert np.allclose(
        _channel_values(_per_channel(noisy.astype(np.float64), 1), exact=True), -0.0513, rtol=1e-4
    )
    border = np.full((4, 2, 6, 6), 0.5)
    border[:, :, 0, :] = 0.25
    assert np.isnan(_channel_values(_per_channel(border, 1), exact=True)).all()
