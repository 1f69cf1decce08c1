"""Classic ReLU CNNs: VGG with a spatial flatten, ResNet basic and bottleneck, ResNeXt, DenseNet.

Widths are tiny (8-32 channels) and inputs 16x16 so an export plus an ONNX Runtime run takes well
under a second; the structure (shortcuts, grouped convs, concat growth, flatten into Linear) is
what the channel analysis has to get right.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.archs.common import conv_bn


class VGGFlatten(nn.Module):
    """VGG-BN whose last 12x2x2 map is flattened into a Linear: each channel owns 4 Linear columns."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8),
            conv_bn(8, 8),
            nn.MaxPool2d(2),
            conv_bn(8, 16),
            nn.AvgPool2d(2),
            conv_bn(16, 12),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(12 * 2 * 2, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 stride-2 conv + BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3, act=None)
        self.downsample = (
            conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.downsample(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 reduce, 3x3, 1x1 expand); `groups` > 1 makes it a ResNeXt block."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.reduce = conv_bn(cin, mid, 1)
        self.conv = conv_bn(mid, mid, 3, stride, groups=groups)
        self.expand = conv_bn(mid, cout, 1, act=None)
        self.downsample = (
            conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.expand(self.conv(self.reduce(x))) + self.downsample(x))


class ResNetBasic(nn.Module):
    """Stem, an identity block, a downsampling block, an identity block, GAP, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.layers = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, 2), BasicBlock(16, 16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class ResNetBottleneck(nn.Module):
    """Stem, an identity bottleneck, a downsampling bottleneck, GAP, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.layers = nn.Sequential(Bottleneck(16, 4, 16), Bottleneck(16, 8, 32, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class ResNeXt(nn.Module):
    """Two ResNeXt blocks: grouped 3x3 convs with 4 and 8 groups, one with a projection shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.layers = nn.Sequential(
            Bottleneck(16, 16, 32, stride=2, groups=4), Bottleneck(32, 32, 32, groups=8)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class DenseLayer(nn.Module):
    """Pre-activation dense layer: BN-ReLU-1x1 conv, BN-ReLU-3x3 conv; the result is concatenated."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth),
            nn.ReLU(),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    """Dense block (8 -> 20 channels), transition (1x1 conv + AvgPool), dense block, BN-ReLU-GAP-Linear."""

    def __init__(self, growth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.block1 = nn.Sequential(*[DenseLayer(8 + i * growth, growth) for i in range(3)])
        self.transition = nn.Sequential(
            nn.BatchNorm2d(20), nn.ReLU(), nn.Conv2d(20, 10, 1, bias=False), nn.AvgPool2d(2)
        )
        self.block2 = nn.Sequential(*[DenseLayer(10 + i * growth, growth) for i in range(2)])
        self.head = nn.Sequential(nn.BatchNorm2d(18), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(18, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.transition(self.block1(self.stem(x))))
        return self.fc(torch.flatten(self.head(x), 1))
