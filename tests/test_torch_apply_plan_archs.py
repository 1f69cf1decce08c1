"""`deploysparse.torch.apply_plan` on the architecture suite: the compact module runs and matches the
compact ONNX, or apply_plan says why it cannot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deploysparse import api
from deploysparse.errors import PlanError
from deploysparse.frontend.torch_export import export_onnx
from deploysparse.torch import apply_plan
from tests.archs import ARCHS


def _pruned(arch: str, tmp_path: Path):
    spec = ARCHS[arch]
    module = spec.build()
    path = export_onnx(module, spec.example(1), tmp_path / "m.onnx", keep_bn=True)
    calib = {"input": np.random.default_rng(1).standard_normal((8, *spec.input_shape)).astype(np.float32)}
    return spec, module, api.prune(str(path), criterion="l1", ratio=0.3, calib=calib, round_to=1)


@pytest.mark.parametrize("arch", ["misc_acts", "resnet_bottleneck", "densenet"])
def test_compact_module_matches_compact_onnx(tmp_path: Path, arch: str) -> None:
    spec, module, result = _pruned(arch, tmp_path)
    compact = apply_plan(module, result)  # verifies against the compact ONNX itself
    x = spec.example(3)
    from deploysparse.backends import reference_backend

    want = next(iter(reference_backend().intermediates(result.model, {"input": x.numpy()}).values()))
    with torch.no_grad():
        got = compact(x)
    got = got if isinstance(got, torch.Tensor) else got[0]
    assert np.abs(got.numpy() - want).max() / np.abs(want).max() < 1e-4


def test_forward_with_a_hard_coded_chunk_is_reported(tmp_path: Path) -> None:
    _, module, result = _pruned("shufflenet", tmp_path)
    with pytest.raises(PlanError, match=r"hard-codes a channel count|depends on a channel count"):
        apply_plan(module, result)
