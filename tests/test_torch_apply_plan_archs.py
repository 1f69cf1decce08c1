"""`deploysparse.torch.apply_plan` on the architecture suite: the compact module runs and matches the
compact ONNX, or apply_plan says why it cannot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deploysparse import api
from deploysparse.errors import PlanError
from deploysparse.frontend.torch_export import export_onnx
from deploysparse.torch import apply_plan
from tests.archs import ARCHS, TOKEN_ARCHS


def _pruned(arch: str, tmp_path: Path, exporter: str = "auto"):
    spec = ARCHS.get(arch) or TOKEN_ARCHS[arch]
    module = spec.build()
    path = export_onnx(module, spec.example(1), tmp_path / "m.onnx", keep_bn=True, exporter=exporter)
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


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("arch", list(TOKEN_ARCHS))
def test_compact_token_module_matches_compact_onnx(tmp_path: Path, arch: str, exporter: str) -> None:
    """LayerNorm's normalized_shape, a Linear on the last axis of an NHWC map or tokens (its weight a
    transposed MatMul constant in the graph), ConvNeXt's layer scale and gamma follow the plan."""
    spec, module, result = _pruned(arch, tmp_path, exporter)
    assert result.summary["channels_removed"] > 0
    compact = apply_plan(module, result)
    x = spec.example(3)
    from deploysparse.backends.onnxruntime.intermediates import session

    want = session(result.model).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        got = compact(x)
    assert np.abs(got.numpy() - want).max() / np.abs(want).max() < 1e-5
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in module.parameters())
    for sub in compact.modules():
        if isinstance(sub, nn.LayerNorm):
            assert sub.weight.shape == sub.bias.shape == tuple(sub.normalized_shape)
        elif isinstance(sub, nn.Linear):
            assert tuple(sub.weight.shape) == (sub.out_features, sub.in_features)
    before = {name: sub.in_features for name, sub in module.named_modules() if isinstance(sub, nn.Linear)}
    assert any(
        sub.in_features < before[name] for name, sub in compact.named_modules() if isinstance(sub, nn.Linear)
    ), "no Linear lost an input channel"


def test_forward_with_a_hard_coded_chunk_is_reported(tmp_path: Path) -> None:
    _, module, result = _pruned("shufflenet", tmp_path)
    with pytest.raises(PlanError, match=r"hard-codes a channel count|depends on a channel count"):
        apply_plan(module, result)
