"""Criteria fed by the PyTorch front end's forward hooks choose what the ONNX Runtime route chooses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deploysparse import api
from deploysparse.frontend.torch_export import export_onnx
from tests.archs import ARCHS


@pytest.mark.parametrize("criterion", ["similarity", "inactive"])
def test_hooks_and_onnxruntime_give_the_same_plan(tmp_path: Path, criterion: str) -> None:
    spec = ARCHS["vgg_flatten"]
    module = spec.planted()
    path = export_onnx(module, spec.example(1), tmp_path / "model.onnx", keep_bn=True)
    calib = {"input": np.random.default_rng(3).standard_normal((16, *spec.input_shape)).astype(np.float32)}
    budget = {"ratio": 0.3} if criterion != "inactive" else {}
    via_onnx = api.prune(str(path), criterion=criterion, calib=calib, **budget)
    via_hooks = api.prune(str(path), criterion=criterion, calib=calib, module=module, **budget)
    assert via_onnx.plan.keep.keys() == via_hooks.plan.keep.keys()
    for gid, keep in via_onnx.plan.keep.items():
        np.testing.assert_array_equal(keep, via_hooks.plan.keep[gid])
    assert via_hooks.summary["channels_removed"] > 0
