"""Dead-filter pruning with --round-to keeps channel counts on the multiple and stays exact."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from deploysparse import api


def test_dead_with_round_to_keeps_multiples_and_is_exact(exported) -> None:
    path = exported("vgg_flatten", "dynamo")
    plain = api.prune(str(path), criterion="dead", round_to=1)
    rounded = api.prune(str(path), criterion="dead", round_to=4)
    assert 0 < rounded.summary["channels_removed"] <= plain.summary["channels_removed"]
    for group in rounded.summary["groups"]:
        if group["removed"]:
            assert group["kept"] % 4 == 0 or group["kept"] == group["channels"], group
    x = np.random.default_rng(5).standard_normal((3, 3, 16, 16)).astype(np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    got = ort.InferenceSession(rounded.model.SerializeToString()).run(None, {"input": x})[0]
    assert np.abs(want - got).max() / np.abs(want).max() < 1e-5


def test_ranking_criterion_may_remove_a_constant_channel_that_dead_keeps(tmp_path) -> None:
    """A near-dead channel (BN scale 1e-6, shift 0.5: constant 0.5 after ReLU) feeding a padded conv
    cannot be folded exactly, so `dead` keeps it; a ranking criterion that removes it anyway must
    not try to fold it (it is an ordinary, measured removal)."""
    import torch
    from torch import nn

    from deploysparse.frontend.torch_export import export_onnx

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 4),
    ).eval()  # fmt: skip
    with torch.no_grad():
        net[1].weight[2] = 1e-6
        net[1].bias[2] = 0.5
        net[0].weight[2] *= 1e-3  # the smallest filter: L1 removes it first
    path = export_onnx(net, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", keep_bn=True)
    calib = {"input": np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)}
    dead = api.prune(str(path), criterion="dead", calib=calib, round_to=1)
    assert dead.summary["channels_removed"] == 0
    assert any("cannot absorb it exactly" in w for w in dead.summary["warnings"])
    ranked = api.prune(str(path), criterion="l1", ratio=0.25, calib=calib, round_to=1)
    first_group = ranked.summary["groups"][1]
    assert first_group["removed"] > 0 and 2 not in ranked.plan.kept("g1", first_group["channels"])
    assert "output_change" in ranked.summary
