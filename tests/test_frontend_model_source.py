"""MODEL argument resolution: a bare .onnx, an entry point (exported), or a clear error."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from deploysparse.errors import ModelLoadError, UsageError
from deploysparse.frontend.model_source import is_entry_point, resolve_model

_MODELS = """
from torch import nn

def net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))

def net_with_shape():
    model = net()
    model.input_shape = (1, 3, 10, 10)
    return model
"""


@pytest.fixture
def spec_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"dsp_src_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(_MODELS))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_entry_point_with_weights_is_exported(spec_module: str, tmp_path: Path) -> None:
    from deploysparse.frontend.torch_loader import load_entry_point

    reference = load_entry_point(f"{spec_module}:net")
    torch.manual_seed(3)
    state = {k: torch.rand_like(v.float()).to(v.dtype) + 0.5 for k, v in reference.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    resolved = resolve_model(
        f"{spec_module}:net", weights=tmp_path / "w.pt", input_shape="1,3,12,12", workdir=tmp_path / "work"
    )
    assert resolved.source == "entry-point"
    assert resolved.input_shape == (1, 3, 12, 12)
    assert resolved.onnx_path.parent == tmp_path / "work"
    model = onnx.load(str(resolved.onnx_path))
    assert {"0.weight", "1.weight", "1.running_var", "5.weight"} <= {t.name for t in model.graph.initializer}
    x = np.random.default_rng(0).standard_normal((3, 3, 12, 12)).astype(np.float32)
    session = ort.InferenceSession(str(resolved.onnx_path), providers=["CPUExecutionProvider"])
    expected = resolved.module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, atol=1e-5)


def test_shape_from_module_attribute_then_calibration(spec_module: str, tmp_path: Path) -> None:
    resolved = resolve_model(f"{spec_module}:net_with_shape", workdir=tmp_path)
    assert resolved.input_shape == (1, 3, 10, 10)
    resolved = resolve_model(f"{spec_module}:net", workdir=tmp_path, calib_shape=(64, 3, 9, 9))
    assert resolved.input_shape == (1, 3, 9, 9)


def test_entry_point_without_any_shape(spec_module: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--input-shape"):
        resolve_model(f"{spec_module}:net", workdir=tmp_path)


def test_bare_onnx_is_used_in_place(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "g", [value("x", 1, [1, 2])], [value("y", 1, [1, 2])])
    onnx.save(onnx.helper.make_model(graph), str(path))
    resolved = resolve_model(str(path), workdir=tmp_path / "work")
    assert (resolved.onnx_path, resolved.module, resolved.source) == (path, None, "onnx")
    assert not (tmp_path / "work").exists()
    with pytest.raises(UsageError, match="--weights applies to a PyTorch entry point"):
        resolve_model(str(path), weights=tmp_path / "w.pt", workdir=tmp_path)


@pytest.mark.parametrize(
    ("model", "error", "words"),
    [
        ("absent.onnx", ModelLoadError, "absent.onnx: no such file"),
        ("resnet18.pth", UsageError, "is a weights file"),
        ("resnet18", ModelLoadError, "not an entry point"),
        ("dsp_absent_pkg:net", ModelLoadError, "module 'dsp_absent_pkg' not found"),
    ],
)
def test_bad_model_arguments(tmp_path: Path, model: str, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        resolve_model(model, workdir=tmp_path)


@pytest.mark.parametrize(
    ("text", "entry_point"),
    [
        ("x.onnx", False),
        ("X.ONNX", False),
        ("pkg.mod:fn", True),
        ("pkg.mod:Factory.build", True),
        ("models/net.py:build", True),  # torch_loader imports a .py file by path
        ("mydata:load", True),  # a sweep's data function
        ("C:\\path\\m.onnx", False),
        ("C:/models/m.pt", False),  # a Windows drive, not module C
        ("./dir/m.onnx", False),
        ("dir/m.onnx", False),
        ("./data:x", False),  # the module is no dotted name
        ("pkg.mod:", False),
        (":fn", False),
        ("pkg.mod:fn-v2", False),
        ("resnet18", False),
        ("calib.npy", False),
    ],
)
def test_is_entry_point(text: str, entry_point: bool) -> None:
    assert is_entry_point(text) is entry_point


def test_a_file_that_exists_is_a_file_even_with_a_colon(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "run:v2").write_bytes(b"")  # a name an entry point could have
    monkeypatch.chdir(tmp_path)
    assert not is_entry_point("run:v2")
    assert is_entry_point("run:v3")
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    assert is_entry_point("run:v2", folder=elsewhere)  # looked for where the caller's paths start
    assert not is_entry_point("run:v2", folder=tmp_path)
