"""`deploysparse.torch.apply_plan` replays the ONNX surgery on the nn.Module: same compact function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from deploysparse.errors import PlanError
from deploysparse.frontend.torch_export import export_onnx
from deploysparse.graph.analysis import GraphAnalysis, analyze_graph
from deploysparse.graph.surgery import rewrite_graph
from deploysparse.modelio import load_model
from deploysparse.plan import Plan
from deploysparse.torch import apply_plan


class VggBn(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, bias: bool = True) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=bias),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        self.features = nn.Sequential(
            *block(3, 16), *block(16, 16, bias=False), nn.MaxPool2d(2), *block(16, 12)
        )
        self.classifier = nn.Sequential(nn.Linear(12 * 4 * 4, 20), nn.ReLU(), nn.Linear(20, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 24, 2))
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.layer1(self.stem(x)), 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.expand = nn.Conv2d(cin, hidden, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.relu6(self.bn0(self.expand(x)))
        out = nn.functional.relu6(self.bn1(self.dw(out)))
        out = self.bn2(self.project(out))
        return x + out if self.use_residual else out


class TinyMobileNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(16, 16, 1, 3), InvertedResidual(16, 24, 2, 3))
        self.head = nn.Sequential(nn.Conv2d(24, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _trained(module: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics, as after training (fresh ones are all 0/1)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.BatchNorm2d):
                n = sub.num_features
                sub.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                sub.bias.copy_(torch.randn(n, generator=generator) * 0.5)
                sub.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                sub.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return module.eval()


def _kill_channel(bn: nn.BatchNorm2d, channel: int, beta: float) -> None:
    """A dead filter: BN scale 0, so the channel outputs the constant beta whatever the input."""
    with torch.no_grad():
        bn.weight[channel] = 0.0
        bn.bias[channel] = beta


def _random_plan(ga: GraphAnalysis, seed: int, protect: dict[str, int] | None = None) -> Plan:
    rng = np.random.default_rng(seed)
    plan = Plan(criterion="test")
    for group in ga.prunable_groups:
        if not group.producers:
            continue
        per_block = group.size // group.block
        keep_per_block = max(1, int(per_block * 0.6))
        kept = []
        for b in range(group.block):
            kept.extend(b * per_block + rng.choice(per_block, keep_per_block, replace=False))
        kept = np.union1d(kept, group.pinned_channels).astype(np.int64)
        if group.block == 1 or len(kept) == keep_per_block * group.block:
            plan.keep[group.id] = kept
    return plan


def _group_of(ga: GraphAnalysis, weight: str) -> str:
    return next(g.id for g in ga.groups if any(m.role == "producer" and m.name == weight for m in g.members))


def _consumer_input(ga: GraphAnalysis, weight: str) -> str:
    return next(n.input[0] for n in ga.model.graph.node if len(n.input) > 1 and n.input[1] == weight)


def _ort(model: object, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


_DEAD = 2  # the channel a case kills before export and its plan removes


def _without(plan: Plan, gid: str, channel: int) -> None:
    plan.keep[gid] = np.setdiff1d(plan.keep[gid], [channel])


def _kill_vgg(module: nn.Module) -> None:
    _kill_channel(module.features[8], _DEAD, 0.7)


def _vgg_plan(ga: GraphAnalysis) -> Plan:
    plan = _random_plan(ga, 1)
    _without(plan, _group_of(ga, "features.7.weight"), _DEAD)
    values = np.zeros(12 * 16)
    values[_DEAD * 16 : (_DEAD + 1) * 16] = 0.7  # relu(0.7) in every spatial position of the channel
    plan.constants[_consumer_input(ga, "classifier.0.weight")] = values
    first = _group_of(ga, "features.0.weight")
    plan.scales[first] = np.random.default_rng(2).uniform(0.5, 1.5, 16)
    second = _group_of(ga, "features.3.weight")
    removed = np.setdiff1d(np.arange(16), plan.keep[second])
    plan.merges[second] = [(int(removed[0]), int(plan.keep[second][0]), 0.5)]
    return plan


def _resnet_plan(ga: GraphAnalysis) -> Plan:
    plan = _random_plan(ga, 3)
    residual = _group_of(ga, "layer1.1.downsample.0.weight")
    plan.scales[residual] = np.random.default_rng(4).uniform(0.5, 1.5, 24)
    return plan


def _kill_mobilenet(module: nn.Module) -> None:
    _kill_channel(module.blocks[0].bn1, _DEAD, 0.4)


def _mobilenet_plan(ga: GraphAnalysis) -> Plan:
    plan = _random_plan(ga, 5)
    _without(plan, _group_of(ga, "blocks.0.expand.weight"), _DEAD)
    values = np.zeros(48)
    values[_DEAD] = 0.4  # relu6(0.4): the projection is 1x1 without padding, so it folds into a new bias
    plan.constants[_consumer_input(ga, "blocks.0.project.weight")] = values
    return plan


def _no_dead_filter(module: nn.Module) -> None:
    del module


CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], Callable, Callable]] = {
    "vgg_bn_flatten": (VggBn, (1, 3, 8, 8), _kill_vgg, _vgg_plan),
    "resnet_basic_block": (TinyResNet, (1, 3, 16, 16), _no_dead_filter, _resnet_plan),
    "mobilenetv2_depthwise": (TinyMobileNet, (1, 3, 16, 16), _kill_mobilenet, _mobilenet_plan),
}


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_compact_module_matches_compact_onnx(case: str, exporter: str, tmp_path: Path) -> None:
    build, shape, kill, make_plan = CASES[case]
    module = _trained(build(), seed=7)
    kill(module)
    path = export_onnx(module, torch.randn(shape), tmp_path / "m.onnx", exporter=exporter)
    ga = analyze_graph(load_model(path))
    surgery = rewrite_graph(ga, make_plan(ga))
    before = {k: v.clone() for k, v in module.state_dict().items()}

    compact = apply_plan(module, surgery)

    x = np.random.default_rng(11).standard_normal((3, *shape[1:])).astype(np.float32)
    with torch.no_grad():
        got = compact(torch.from_numpy(x)).numpy()
    assert _relative_error(got, _ort(surgery.model, x)) < 1e-5
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in module.parameters())
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())
    _assert_attributes_consistent(compact)
    if case == "vgg_bn_flatten":
        assert "classifier.0.weight" in surgery.biases
        assert surgery.values
    if case == "mobilenetv2_depthwise":
        assert compact.blocks[0].project.bias is not None
    compact.train()
    compact(torch.from_numpy(x)).square().mean().backward()
    assert all(p.grad is not None for p in compact.parameters())


def _assert_attributes_consistent(module: nn.Module) -> None:
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            assert sub.weight.shape[0] == sub.out_channels
            assert sub.weight.shape[1] * sub.groups == sub.in_channels
            assert sub.bias is None or sub.bias.shape == (sub.out_channels,)
        elif isinstance(sub, nn.BatchNorm2d):
            assert sub.weight.shape == sub.running_var.shape == (sub.num_features,)
        elif isinstance(sub, nn.Linear):
            assert tuple(sub.weight.shape) == (sub.out_features, sub.in_features)


@dataclass
class _Record:
    """A hand-made surgery record: apply_plan only reads these three fields."""

    slices: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    biases: dict[str, np.ndarray] = field(default_factory=dict)


def test_record_for_a_missing_tensor_of_an_existing_submodule_is_refused() -> None:
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(PlanError, match=r"names 1\.scale, which module '1' does not have"):
        apply_plan(module, _Record(slices={"1.scale": {0: np.array([0, 1])}}))
    with pytest.raises(PlanError, match=r"slice of 0\.weight along axis 0 does not fit"):
        apply_plan(module, _Record(slices={"0.weight": {0: np.array([0, 9])}}))
    with pytest.raises(PlanError, match=r"new bias for 0\.weight has shape \(3,\)"):
        apply_plan(module, _Record(biases={"0.weight": np.zeros(3)}))


def test_exporter_constants_without_module_tensor_are_skipped() -> None:
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    record = _Record(
        slices={
            "0.weight": {0: np.array([1, 3])},
            "0.bias": {0: np.array([1, 3])},
            "2.weight": {1: np.array([1, 3])},
        },
        values={"val_25": np.array([-1, 2])},
    )
    compact = apply_plan(module, record)
    x = torch.randn(5, 3, 3, 3)
    expected = module[2].weight[:, [1, 3]] @ module[0](x).flatten(1)[:, [1, 3]].T + module[2].bias[:, None]
    torch.testing.assert_close(compact(x), expected.T)
    assert (compact[0].out_channels, compact[2].in_features) == (2, 2)


def test_depthwise_groups_follow_the_kept_channels_without_a_graph() -> None:
    module = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.BatchNorm2d(4))
    kept = np.array([0, 2])
    names = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"]
    compact = apply_plan(module.eval(), _Record(slices={name: {0: kept} for name in names}))
    assert (compact[0].groups, compact[0].in_channels, compact[0].out_channels) == (2, 2, 2)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(compact(x[:, kept]), module(x)[:, kept])
