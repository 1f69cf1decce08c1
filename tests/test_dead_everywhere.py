"""Dead filters wherever they hide: after an expand or a depthwise conv, through zero padding, in a
residual stream, before a concat, in Res2Net splits, YOLO's C2f chunk and SPPF.

Every planted channel identity must be removed, on both exporters with BN kept and BN folded, and the
compact model must equal the original on fresh random inputs. Non-zero constants that meet zero
padding must stay (their border differs), and the compact model stays exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from deploysparse import api
from deploysparse.budget import Budget
from deploysparse.criteria import CriterionContext, plan_with
from deploysparse.graph.analysis import analyze_graph
from deploysparse.graph.dead import find_dead
from tests.archs.hiding import ARCHS, ZERO_RELU, ZERO_SILU
from tests.exporting import EXPORTERS, export, random_feeds, relative_error, run

# float32 outputs of nets a few layers deep; folded constants add one rounding per bias.
TOLERANCE = 1e-5
EXPORTS = [(e, keep_bn) for e in EXPORTERS for keep_bn in (False, True)]


pytestmark = pytest.mark.slow  # about 100 s on 2 shared cores: 8 architectures x 4 exports


@pytest.fixture(scope="module")
def hidden(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hiding")
    cache: dict[tuple[str, str, bool], Path] = {}

    def get(arch: str, exporter: str, keep_bn: bool) -> Path:
        key = (arch, exporter, keep_bn)
        if key not in cache:
            spec = ARCHS[arch]
            path = root / f"{arch}-{exporter}-{'bn' if keep_bn else 'folded'}.onnx"
            cache[key] = export(spec.planted(), spec.example(2), path, exporter, keep_bn)
        return cache[key]

    return get


def assert_exact(original: Path, compact, seed: int) -> None:
    feeds = random_feeds(original, np.random.default_rng(seed), batch=3)
    for a, b in zip(run(original, feeds), run(compact, feeds), strict=True):
        assert a.shape == b.shape
        assert relative_error(a, b) < TOLERANCE


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize(
    ("exporter", "keep_bn"), EXPORTS, ids=[f"{e}-{'bn' if k else 'folded'}" for e, k in EXPORTS]
)
def test_every_planted_dead_channel_is_removed_exactly(
    hidden, arch: str, exporter: str, keep_bn: bool
) -> None:
    path = hidden(arch, exporter, keep_bn)
    result = api.prune(str(path), criterion="dead", round_to=1)
    assert result.summary["channels_removed"] == ARCHS[arch].removed, [
        (g["id"], g["label"], g["removed"]) for g in result.summary["groups"] if g["removed"]
    ]
    assert result.plan.notes == [] and result.summary.get("output_change") is None
    assert_exact(path, result.model, seed=ARCHS[arch].seed)


ZERO_PLANTED = [
    name for name, a in ARCHS.items() if {s for _, s in a.plant.values()} <= {ZERO_RELU, ZERO_SILU}
]


@pytest.mark.parametrize("arch", sorted(ZERO_PLANTED))
def test_inactive_reaches_the_same_channels(hidden, arch: str) -> None:
    """Channels that are 0 wherever they are finally read are inactive on any data: the data-driven
    criterion alone (no dead-filter analysis passed to it) removes every one the dead-filter pass
    removes (and may remove more: channels that happen to be 0 on this data)."""
    path = hidden(arch, "dynamo", True)
    ga = analyze_graph(onnx.load(str(path)))
    dead = find_dead(ga)
    assert dead.count == ARCHS[arch].removed
    x = np.random.default_rng(3).standard_normal((16, *ARCHS[arch].input_shape)).astype(np.float32)
    plan = plan_with("inactive", ga, CriterionContext(ga, calib={"input": x}), Budget(round_to=1))
    for gid, channels in dead.channels.items():
        size = ga.group(gid).size
        removed = np.setdiff1d(np.arange(size), plan.kept(gid, size))
        assert set(channels.tolist()) <= set(removed.tolist()), (gid, ga.group(gid).label)
