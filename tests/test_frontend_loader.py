"""Entry-point loading: every way a user can get it wrong ends in one clear DeploysparseError."""

from __future__ import annotations

import pickle
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from deploysparse.errors import DeploysparseError, ModelLoadError, UsageError
from deploysparse.frontend.torch_loader import load_entry_point

_MODELS = """
import torch
from torch import nn

def small():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

class Small(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

def broken():
    raise ValueError("depth must be positive")

def not_a_model():
    return {"conv": 3}

instance = small()
"""


@pytest.fixture
def models_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"dsp_user_models_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(_MODELS))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _trained_state(spec: str) -> dict[str, torch.Tensor]:
    model = load_entry_point(spec)
    torch.manual_seed(1)
    return {k: torch.randn_like(v.float()).to(v.dtype) for k, v in model.state_dict().items()}


def test_factory_and_weights_load_in_eval_mode(models_module: str, tmp_path: Path) -> None:
    spec = f"{models_module}:small"
    state = _trained_state(spec)
    weights = tmp_path / "w.pt"
    torch.save(state, weights)
    model = load_entry_point(spec, weights)
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_checkpoint_dict_and_dataparallel_prefix(models_module: str, tmp_path: Path, wrapper: str) -> None:
    spec = f"{models_module}:Small"
    state = _trained_state(spec)
    weights = tmp_path / "ckpt.pt"
    torch.save({wrapper: {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, weights)
    model = load_entry_point(spec, weights)
    assert torch.equal(model.state_dict()["0.weight"], state["0.weight"])


def test_module_instance_attribute_is_used_as_is(models_module: str) -> None:
    assert isinstance(load_entry_point(f"{models_module}:instance"), torch.nn.Sequential)


@pytest.mark.parametrize(
    ("spec", "error", "words"),
    [
        ("dsp_no_such_pkg.models", UsageError, ["package.module:factory"]),
        ("dsp_no_such_pkg.models:build", ModelLoadError, ["dsp_no_such_pkg.models", "not found"]),
        (":build", UsageError, ["package.module:factory"]),
    ],
)
def test_bad_specs(spec: str, error: type, words: list[str]) -> None:
    with pytest.raises(error) as info:
        load_entry_point(spec)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_missing_attribute(models_module: str) -> None:
    with pytest.raises(UsageError, match=r"has no attribute 'resnet'"):
        load_entry_point(f"{models_module}:resnet")


def test_import_error_inside_module_names_the_missing_dependency(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "dsp_needs_dep.py").write_text("import dsp_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ModelLoadError, match=r"importing module 'dsp_needs_dep' failed: .*dsp_absent_dependency"
    ):
        load_entry_point("dsp_needs_dep:build")


def test_factory_that_raises(models_module: str) -> None:
    with pytest.raises(
        ModelLoadError, match=r"factory '.*:broken' raised ValueError: depth must be positive"
    ):
        load_entry_point(f"{models_module}:broken")


def test_factory_returning_non_module(models_module: str) -> None:
    with pytest.raises(ModelLoadError, match=r"returned a dict, expected a torch.nn.Module"):
        load_entry_point(f"{models_module}:not_a_model")


def test_python_file_entry_point(tmp_path: Path) -> None:
    file = tmp_path / "arch.py"
    file.write_text(textwrap.dedent(_MODELS))
    assert isinstance(load_entry_point(f"{file}:small"), torch.nn.Sequential)


def test_missing_checkpoint(models_module: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"weights file .*absent.pt not found"):
        load_entry_point(f"{models_module}:small", tmp_path / "absent.pt")


def test_checkpoint_with_missing_and_unexpected_keys(models_module: str, tmp_path: Path) -> None:
    spec = f"{models_module}:small"
    state = _trained_state(spec)
    del state["1.running_var"]
    state["head.weight"] = torch.randn(2)
    weights = tmp_path / "partial.pt"
    torch.save(state, weights)
    with pytest.raises(ModelLoadError) as info:
        load_entry_point(spec, weights)
    message = str(info.value)
    assert "missing keys 1.running_var" in message
    assert "unexpected keys head.weight" in message


def test_checkpoint_with_wrong_shape(models_module: str, tmp_path: Path) -> None:
    spec = f"{models_module}:small"
    state = _trained_state(spec)
    state["0.weight"] = torch.randn(5, 3, 3, 3)
    weights = tmp_path / "shape.pt"
    torch.save(state, weights)
    with pytest.raises(ModelLoadError, match=r"size mismatch for 0.weight"):
        load_entry_point(spec, weights)


class _Payload:
    """A pickled object of a class: loading it would mean running code from the file."""

    def __init__(self) -> None:
        self.note = "not a tensor"


def test_pickled_object_is_refused_not_executed(models_module: str, tmp_path: Path) -> None:
    weights = tmp_path / "code.pt"
    torch.save({"0.weight": torch.randn(4, 3, 3, 3), "extra": _Payload()}, weights)
    with pytest.raises(ModelLoadError) as info:
        load_entry_point(f"{models_module}:small", weights)
    message = str(info.value)
    assert "not a plain state dict" in message
    assert "weights_only" in message
    assert "_Payload" in message
    assert "\n" not in message


def test_plain_pickle_and_garbage_are_refused(models_module: str, tmp_path: Path) -> None:
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(pickle.dumps(_Payload()))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"these bytes are no checkpoint")
    for path in (pickled, garbage):
        with pytest.raises(DeploysparseError, match=str(path.name)):
            load_entry_point(f"{models_module}:small", path)
