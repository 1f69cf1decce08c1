"""Any legal plan, applied by surgery, equals the original with those channels zeroed.

Random plans remove live channels too, so this checks every slice the surgery makes (producers,
per-channel constants, consumers, concat offsets, flatten blocks, grouped-conv blocks) and not just
the easy case where the removed channels were zero anyway.
"""

from __future__ import annotations

import numpy as np
import pytest

from deploysparse.graph.analysis import analyze_graph
from deploysparse.graph.masking import zero_channels
from deploysparse.modelio import load_model
from tests.archs import ARCHS
from tests.archs.plans import assert_random_plans_match_masked, random_plan
from tests.exporting import EXPORTERS, random_feeds, relative_error, run

SEEDS = (0, 1, 2)
CASES = (
    [
        pytest.param(arch, exporter, False, None, id=f"{arch}-{exporter}")
        for arch in ARCHS
        for exporter in EXPORTERS
    ]
    + [
        pytest.param(arch, exporter, True, None, id=f"{arch}-{exporter}-bn")
        for arch in ("resnet_basic", "densenet", "unet_convtranspose")
        for exporter in EXPORTERS
    ]
    # Opset 11: hardswish as x * HardSigmoid(x), Clip bounds as Constant nodes, Resize with scales.
    + [
        pytest.param(arch, "legacy", False, 11, id=f"{arch}-legacy-opset11")
        for arch in ("se_hardswish", "mobilenet_v2", "unet_bilinear")
    ]
)


@pytest.mark.parametrize(("arch", "exporter", "keep_bn", "opset"), CASES)
def test_random_plan_matches_masked_original(
    exported, arch: str, exporter: str, keep_bn: bool, opset: int | None
) -> None:
    ga = analyze_graph(load_model(exported(arch, exporter, keep_bn, opset)))
    assert any(g.prunable for g in ga.groups), "no prunable group found"
    assert_random_plans_match_masked(ga, ARCHS[arch].seed, SEEDS)


@pytest.mark.parametrize("arch", ["resnext", "densenet", "unet_convtranspose", "vgg_flatten"])
def test_random_plan_through_plan_json_and_cli(exported, tmp_path, cli, arch: str) -> None:
    """A random plan saved as plan.json and applied by `prune --plan` gives the masked original."""
    path = exported(arch, "legacy")
    ga = analyze_graph(load_model(path))
    rng = np.random.default_rng(ARCHS[arch].seed)
    plan = random_plan(ga, rng)
    plan_path = tmp_path / "plan.json"
    plan.save(plan_path, ga)
    out = tmp_path / "compact.onnx"
    result = cli("prune", path, "--plan", plan_path, "-o", out)
    assert result.code == 0, result.err
    masked = zero_channels(ga, plan)
    feeds = random_feeds(ga.model, rng, batch=2)
    for a, b in zip(run(masked, feeds), run(out, feeds), strict=True):
        assert relative_error(a, b) < 1e-5
