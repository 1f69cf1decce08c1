"""Mobile CNNs: MobileNetV2 (ReLU6, depthwise, linear bottleneck), squeeze-excite nets with Hardswish or
SiLU, and a ShuffleNetV2 unit (channel split, concat, view/transpose/view shuffle).
"""

from __future__ import annotations

import torch
from torch import nn

from tests.archs.common import conv_bn


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), linear 1x1 projection, skip."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            conv_bn(hidden, cout, 1, act=None),
        ]
        self.body = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.skip else self.body(x)


class MobileNetV2(nn.Module):
    """Stem, three inverted residuals (one with a skip), 1x1 head conv, GAP, Dropout, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8, act=nn.ReLU6),
            InvertedResidual(8, 8, 1, 1),
            InvertedResidual(8, 12, 2, 4),
            InvertedResidual(12, 12, 1, 4),
            conv_bn(12, 32, 1, act=nn.ReLU6),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class SqueezeExcite(nn.Module):
    """GAP -> 1x1 conv -> ReLU -> 1x1 conv -> gate -> multiply the input channels."""

    def __init__(self, channels: int, squeeze: int, gate: type[nn.Module]) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class SEBlock(nn.Module):
    """MobileNetV3 / EfficientNet block: expand, depthwise, squeeze-excite, linear projection, skip."""

    def __init__(self, channels: int, hidden: int, act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        self.expand = conv_bn(channels, hidden, 1, act=act)
        self.depthwise = conv_bn(hidden, hidden, 3, groups=hidden, act=act)
        self.se = SqueezeExcite(hidden, hidden // 4, gate)
        self.project = conv_bn(hidden, channels, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class SENet(nn.Module):
    """Stem, two SE blocks, a 1x1 head conv, GAP, Linear; activation and gate are parameters."""

    def __init__(self, act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8, stride=2, act=act),
            SEBlock(8, 16, act, gate),
            SEBlock(8, 24, act, gate),
            conv_bn(8, 16, 1, act=act),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle, written the way torchvision writes it (view, transpose, view)."""
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, c, h, w)


class ShuffleNet(nn.Module):
    """A ShuffleNetV2 unit: split channels in two, transform one half, concat, shuffle, then a head.

    The shuffle permutes channels through a reshape, which the analysis cannot follow: the spaces it
    touches must be pinned while the branch convs stay prunable.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.branch = nn.Sequential(conv_bn(8, 8, 1), conv_bn(8, 8, 3, groups=8, act=None), conv_bn(8, 8, 1))
        self.head = conv_bn(16, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        left, right = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat([left, self.branch(right)], 1), 2)
        return self.fc(torch.flatten(self.pool(self.head(x)), 1))
