"""Dead-filter pruning on real architectures, exported by both torch exporters, must be exact.

Each architecture has 30% of every BN layer's channels planted dead (gamma = 0, beta chosen so the
activation outputs exactly 0). Pruning with the "dead" criterion must remove channels, keep the
graph valid, keep names, opset and the dynamic batch, leave the input file untouched, and compute
the same outputs as the original on fresh random inputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from deploysparse import api
from deploysparse.modelio import save_model
from tests.archs import ARCHS
from tests.archs.common import plant_dead
from tests.exporting import EXPORTERS, export, random_feeds, relative_error, run, weight_count

TOLERANCE = 1e-5
# BN left in the graph (exporter optimizations off): the dynamo exporter then also emits the conv
# bias as a Shape/Expand sub-graph the analysis has to fold.
BN_KEPT = ("resnet_basic", "mobilenet_v2", "se_hardswish", "densenet", "unet_convtranspose", "shufflenet")
CASES = [
    pytest.param(arch, exporter, False, id=f"{arch}-{exporter}") for arch in ARCHS for exporter in EXPORTERS
] + [
    pytest.param(arch, exporter, True, id=f"{arch}-{exporter}-bn")
    for arch in BN_KEPT
    for exporter in EXPORTERS
]


def file_digest(path: Path) -> str:
    """Hash of the model file and its external data file (if any)."""
    digest = hashlib.sha256(path.read_bytes())
    data = path.with_name(path.name + ".data")
    if data.exists():
        digest.update(data.read_bytes())
    return digest.hexdigest()


def io_signature(model: onnx.ModelProto) -> list[tuple[str, list[str | int]]]:
    """Names and dims (symbolic names or sizes) of the graph inputs and outputs, minus initializers."""
    inits = {i.name for i in model.graph.initializer}
    rows = []
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in inits:
            continue
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        rows.append((value.name, dims))
    return rows


def default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def assert_exact(
    original: Path | onnx.ModelProto, compact: Path | onnx.ModelProto, seed: int, batch: int
) -> None:
    """Original and compact agree to TOLERANCE on every output for fresh standard-normal inputs."""
    feeds = random_feeds(original, np.random.default_rng(seed), batch=batch)
    expected = run(original, feeds)
    got = run(compact, feeds)
    assert len(expected) == len(got)
    for i, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert a.shape == b.shape, f"output {i}: shape {b.shape}, expected {a.shape}"
        err = relative_error(a, b)
        assert err < TOLERANCE, f"output {i}: relative error {err:.3g}"


@pytest.mark.parametrize(("arch", "exporter", "keep_bn"), CASES)
def test_dead_pruning_is_exact(exported, tmp_path: Path, arch: str, exporter: str, keep_bn: bool) -> None:
    path = exported(arch, exporter, keep_bn)
    before = file_digest(path)

    result = api.prune(str(path), criterion="dead", round_to=1)

    out = tmp_path / "compact.onnx"
    save_model(result.model, out)
    assert file_digest(path) == before, "the input model was modified"

    original = onnx.load(str(path))
    compact = onnx.load(str(out))
    onnx.checker.check_model(str(out), full_check=True)

    summary = result.summary
    assert summary["channels_removed"] > 0, f"no planted dead channel removed: {summary}"
    assert summary["params_after"] < summary["params_before"]
    assert weight_count(compact) < weight_count(original), "conv/gemm weights did not shrink"

    assert io_signature(compact) == io_signature(original)
    assert default_opset(compact) == default_opset(original)
    # Exported at batch 2 with a symbolic batch: run at batch 3 to prove the batch stayed dynamic.
    assert_exact(path, out, seed=ARCHS[arch].seed, batch=3)


# Nets where every BN is followed by an activation with f(const) = 0 and no residual sum: each
# planted channel is a dead filter of its own and must be removed, and nothing else.
SIMPLE = ("vgg_flatten", "misc_acts", "two_head", "unet_nearest", "unet_bilinear", "unet_convtranspose")


@pytest.mark.parametrize(
    ("arch", "exporter", "keep_bn"),
    [(a, e, False) for a in SIMPLE for e in EXPORTERS]
    + [("unet_convtranspose", "dynamo", True), ("vgg_flatten", "legacy", True)],
)
def test_every_planted_channel_is_removed(exported, arch: str, exporter: str, keep_bn: bool) -> None:
    planted = sum(len(c) for c in ARCHS[arch].planted_channels().values())
    summary = api.prune(str(exported(arch, exporter, keep_bn)), criterion="dead", round_to=1).summary
    assert summary["channels_removed"] == planted, [g for g in summary["groups"] if g["removed"]]


@pytest.mark.parametrize("arch", ["resnet_basic", "mobilenet_v2", "unet_nearest", "densenet", "two_head"])
def test_exporters_find_the_same_dead_channels(exported, arch: str) -> None:
    """The same planted torch model exported two ways has the same dead channels; both must find them."""
    removed = {
        e: api.prune(str(exported(arch, e)), criterion="dead", round_to=1).summary["channels_removed"]
        for e in EXPORTERS
    }
    assert removed["dynamo"] == removed["legacy"], removed


def test_folded_and_kept_bn_find_the_same_dead_channels(exported) -> None:
    removed = [
        api.prune(
            str(exported("resnet_bottleneck", "legacy", keep_bn)), criterion="dead", round_to=1
        ).summary["channels_removed"]
        for keep_bn in (False, True)
    ]
    assert removed[0] == removed[1], removed


@pytest.mark.parametrize("arch", ["shufflenet"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_channel_shuffle_is_pinned(exported, arch: str, exporter: str) -> None:
    """The view/transpose/view shuffle must pin the channels it permutes and name the op in the report."""
    analysis = api.analyze(str(exported(arch, exporter)))
    pinned_ops = {p.op for p in analysis.pinned}
    assert pinned_ops & {"Reshape", "Transpose"}, f"shuffle not pinned; pinned by {pinned_ops}"
    assert any(g.prunable for g in analysis.groups), "the branch convs should stay prunable"


def test_cli_prune_writes_compact_and_plan(exported, tmp_path: Path, cli) -> None:
    """`deploysparse prune MODEL --criterion dead -o OUT --plan-out PLAN --json` end to end."""
    path = exported("resnext", "dynamo")
    out = tmp_path / "out" / "compact.onnx"
    plan_path = tmp_path / "plan.json"
    result = cli(
        "prune", path, "--criterion", "dead", "-o", out, "--plan-out", plan_path, "--json", "--round-to", "1"
    )
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["channels_removed"] > 0
    assert plan_path.exists()
    assert_exact(path, out, seed=7, batch=2)

    # The written plan, applied again, gives the same compact model.
    again = tmp_path / "again.onnx"
    result = cli("prune", path, "--plan", plan_path, "-o", again)
    assert result.code == 0, result.err
    assert weight_count(onnx.load(str(again))) == weight_count(onnx.load(str(out)))
    assert_exact(out, again, seed=8, batch=2)


# (arch, planted beta): the channels are constant but NOT zero after the activation (relu(0.5) = 0.5,
# silu(-4) = -0.07). Surgery may remove one only by folding the constant into its consumers' bias,
# which is exact for 1x1 convs and Linear layers (also after Flatten) but not for padded 3x3 convs.
CONSTANT_CASES = [
    ("vgg_flatten", 0.5),
    ("resnet_bottleneck", 0.5),
    ("mobilenet_v2", 0.5),
    ("two_head", 0.5),
    ("se_silu", -4.0),
]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize(("arch", "beta"), CONSTANT_CASES)
def test_constant_channels_are_folded_exactly(tmp_path: Path, arch: str, beta: float, exporter: str) -> None:
    spec = ARCHS[arch]
    model = spec.build()
    plant_dead(model, 0.3, np.random.default_rng(spec.seed + 3), beta=beta)
    path = export(model, spec.example(2), tmp_path / "src" / "model.onnx", exporter, outputs=spec.outputs)

    result = api.prune(str(path), criterion="dead", round_to=1)
    out = save_model(result.model, tmp_path / "compact.onnx")
    onnx.checker.check_model(str(out), full_check=True)
    assert result.summary["channels_removed"] > 0, "no constant channel was folded"
    assert weight_count(onnx.load(str(out))) < weight_count(onnx.load(str(path)))
    assert_exact(path, out, seed=spec.seed, batch=3)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_cli_analyze_json(exported, cli, arch: str) -> None:
    """`analyze --json` on every architecture: parseable, dead channels found, each pinned space named."""
    path = exported(arch, "legacy")
    result = cli("analyze", path, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["params"] > 0 and report["flops"] > 0
    assert report["dead_total"] > 0
    assert sum(len(c) for c in report["dead"].values()) == report["dead_total"]
    group_ids = {g["id"] for g in report["groups"]}
    for space in report["pinned"]:
        assert space["group"] in group_ids and space["op"] and space["reason"], space


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_dead_residual_stream_channel(tmp_path: Path, exporter: str) -> None:
    """Channels 1 and 5 of ResNet's first residual stream: the stem's BN makes them 0 after ReLU, the
    block's last BN makes them -4, so after the sum and ReLU they are 0 again. Every producer of the
    stream is constant there, so both channels go from the whole stream (stem, block, both readers)."""
    spec = ARCHS["resnet_basic"]
    model = spec.build()
    with torch.no_grad():
        for bn in (model.stem[1], model.layers[0].conv2[1]):
            bn.weight[[1, 5]] = 0.0
            bn.bias[[1, 5]] = -4.0
    path = export(model, spec.example(2), tmp_path / "src" / "model.onnx", exporter)
    result = api.prune(str(path), criterion="dead", round_to=1)
    assert result.summary["channels_removed"] == 2, result.summary["groups"]
    out = save_model(result.model, tmp_path / "compact.onnx")
    assert_exact(path, out, seed=spec.seed, batch=2)


@pytest.mark.parametrize("arch", ["vgg_flatten", "unet_convtranspose", "mobilenet_v2", "resnext"])
def test_pruning_the_compact_model_again_finds_nothing(exported, tmp_path: Path, arch: str) -> None:
    """Dead pruning is a fixed point: the compact model has no dead channel left and stays exact."""
    first = api.prune(str(exported(arch, "legacy")), criterion="dead", round_to=1)
    compact = save_model(first.model, tmp_path / "compact.onnx")
    second = api.prune(str(compact), criterion="dead", round_to=1)
    assert second.summary["channels_removed"] == 0, second.summary["groups"]
    again = save_model(second.model, tmp_path / "again.onnx")
    assert weight_count(onnx.load(str(again))) == weight_count(onnx.load(str(compact)))
    assert_exact(compact, again, seed=1, batch=2)


def test_api_leaves_a_model_proto_untouched(exported) -> None:
    """`api.prune` on an in-memory ModelProto must not edit the caller's object."""
    model = onnx.load(str(exported("densenet", "legacy")))
    before = model.SerializeToString(deterministic=True)
    result = api.prune(model, criterion="dead", round_to=1)
    assert result.summary["channels_removed"] > 0
    assert model.SerializeToString(deterministic=True) == before
