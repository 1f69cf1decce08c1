"""Dead-filter pruning with --round-to keeps channel counts on the multiple and stays exact."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from deploysparse import api


def test_dead_with_round_to_keeps_multiples_and_is_exact(exported) -> None:
    path = exported("vgg_flatten", "dynamo")
    plain = api.prune(str(path), criterion="dead")
    rounded = api.prune(str(path), criterion="dead", round_to=4)
    assert 0 < rounded.summary["channels_removed"] <= plain.summary["channels_removed"]
    for group in rounded.summary["groups"]:
        if group["removed"]:
            assert group["kept"] % 4 == 0 or group["kept"] == group["channels"], group
    x = np.random.default_rng(5).standard_normal((3, 3, 16, 16)).astype(np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    got = ort.InferenceSession(rounded.model.SerializeToString()).run(None, {"input": x})[0]
    assert np.abs(want - got).max() / np.abs(want).max() < 1e-5
