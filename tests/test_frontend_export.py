"""ONNX export: names kept, BatchNorm kept, dynamic batch, same function as the module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from deploysparse.errors import ModelLoadError, UsageError
from deploysparse.frontend.model_source import parse_input_shape
from deploysparse.frontend.torch_export import export_onnx


class VggBn(nn.Module):
    """Two fresh BatchNorms with equal parameters: the legacy exporter would de-duplicate them."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU6(inplace=True),
        )
        self.fc = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(x.view(x.size(0), -1))


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_export_keeps_names_and_batchnorm_and_batch_is_dynamic(tmp_path: Path, exporter: str) -> None:
    torch.manual_seed(0)
    module = VggBn().eval()
    path = export_onnx(module, torch.randn(1, 3, 6, 6), tmp_path / "vgg.onnx", exporter=exporter)
    model = onnx.load(str(path))
    initializers = {t.name for t in model.graph.initializer}
    assert (
        set(module.state_dict()) - {"features.1.num_batches_tracked", "features.4.num_batches_tracked"}
        <= initializers
    )
    assert [n.op_type for n in model.graph.node].count("BatchNormalization") == 2
    assert not [n for n in model.graph.node if n.op_type == "Identity"]
    x = np.random.default_rng(1).standard_normal((4, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(path, x), module(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("vgg.onnx")] == []


def test_dynamo_export_folds_shape_arithmetic_into_constants(tmp_path: Path) -> None:
    path = export_onnx(VggBn().eval(), torch.randn(2, 3, 6, 6), tmp_path / "vgg.onnx", exporter="dynamo")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops == {"Conv", "BatchNormalization", "Relu", "Clip", "Reshape", "Gemm"}


def test_auto_export_falls_back_to_dynamo_when_tracing_fails(tmp_path: Path, monkeypatch) -> None:
    """The default tries the fast TorchScript exporter first; a failure there is not the user's."""
    from deploysparse.errors import ModelLoadError
    from deploysparse.frontend import torch_export

    def broken(*args, **kwargs):
        raise ModelLoadError("the legacy ONNX exporter failed: tracing is not supported here")

    monkeypatch.setattr(torch_export, "_export_legacy", broken)
    module = VggBn().eval()
    path = export_onnx(module, torch.randn(2, 3, 6, 6), tmp_path / "auto.onnx")
    assert not any(p.name.startswith(".export-") for p in tmp_path.iterdir())
    x = np.random.default_rng(4).standard_normal((3, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(path, x), module(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_keep_bn_false_folds_batchnorm(tmp_path: Path) -> None:
    module = VggBn().eval()
    path = export_onnx(module, torch.randn(2, 3, 6, 6), tmp_path / "folded.onnx", keep_bn=False)
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    x = np.random.default_rng(2).standard_normal((3, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(path, x), module(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_export_replaces_previous_files_and_keeps_training_flag(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    (tmp_path / "m.onnx.data").write_bytes(b"stale")
    module = VggBn().train()
    export_onnx(module, torch.randn(2, 3, 6, 6), target, exporter="legacy")
    assert module.training
    onnx.checker.check_model(onnx.load(str(target)))
    assert not (tmp_path / "m.onnx.data").exists()


def test_wrong_example_shape_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"does not run on inputs of shape \(1, 3, 9, 9\)"):
        export_onnx(VggBn().eval(), torch.randn(1, 3, 9, 9), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_unknown_exporter(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="exporter 'jit'"):
        export_onnx(VggBn(), torch.randn(1, 3, 6, 6), tmp_path / "m.onnx", exporter="jit")


@pytest.mark.parametrize(
    ("text", "shape"),
    [("1,3,32,32", (1, 3, 32, 32)), ("1x3x224x224", (1, 3, 224, 224)), ("(8, 16)", (8, 16))],
)
def test_parse_input_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize(
    ("text", "words"), [("", "empty"), ("1,3,a,4", "not a list of integers"), ("1,0,4", "<= 0")]
)
def test_parse_input_shape_errors(text: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        parse_input_shape(text)
