"""ResNets with torchvision's exact layout, built in code: shapes for latency benchmarks and surgery tests.

Residual additions couple channel spaces across a whole stage, and bottleneck blocks mix 1x1 and 3x3
convolutions, so these are the models where channel grouping on the ONNX graph earns its keep.
Weights are a seeded random initialisation (torchvision's scheme), never downloaded.

`resnet(depth)` follows torchvision (ResNet v1.5: in a bottleneck the stride sits on the 3x3 conv;
shortcuts that change shape are 1x1 conv + BN), so resnet50 has 25,557,032 parameters.
`cifar_resnet(depth)` is He et al.'s 6n+2 CIFAR network (16/32/64 channels), with projection
shortcuts (1x1 conv + BN, "option B") instead of zero padding, so every shortcut is a real Conv a
pruner can slice rather than a channel-axis Pad that would pin the space.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn as nn

from deploysparse.errors import UsageError

_IMAGENET_BLOCKS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}


class _ResidualBlock(nn.Module, ABC):
    """relu(residual(x) + shortcut): the addition ties the block's output space to its input space.
    The shortcut is x itself, or `downsample` (1x1 conv + BN) where the block changes the shape."""

    relu: nn.ReLU
    downsample: nn.Sequential | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.residual(x) + identity)

    @abstractmethod
    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The block's own layers, before the addition."""


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = _projection(in_ch, planes, stride)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (carrying the stride, as in torchvision's v1.5), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.downsample = _projection(in_ch, out_ch, stride)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """Stem, stages of residual blocks, global average pool, Linear.

    Attribute names are torchvision's (conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc), so a
    torchvision state_dict loads into `resnet(depth)` as is and exported node names read the same.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        stage_blocks: tuple[int, ...],
        num_classes: int,
        width: int,
        in_channels: int,
        imagenet_stem: bool,
    ) -> None:
        super().__init__()
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if imagenet_stem else nn.Identity()
        in_ch = width
        self.stage_names = []
        for index, count in enumerate(stage_blocks):
            planes = width * 2**index
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(count):
                blocks.append(block(in_ch, planes, stride if block_index == 0 else 1))
                in_ch = planes * block.expansion
            self.stage_names.append(f"layer{index + 1}")
            setattr(self, self.stage_names[-1], nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(
    depth: int = 50, num_classes: int = 1000, width: int = 64, in_channels: int = 3, seed: int = 0
) -> ResNet:
    """ImageNet ResNet-18/34/50/101 (torchvision layout); `width` scales every stage (64 = standard)."""
    if depth not in _IMAGENET_BLOCKS:
        raise UsageError(f"depth: expected one of {sorted(_IMAGENET_BLOCKS)}, got {depth}")
    if width < 1 or in_channels < 1 or num_classes < 1:
        raise UsageError(
            f"width, in_channels, num_classes must be positive, got {width}, {in_channels}, {num_classes}"
        )
    kind, blocks = _IMAGENET_BLOCKS[depth]
    block = BasicBlock if kind == "basic" else Bottleneck
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNet(block, blocks, num_classes, width, in_channels, imagenet_stem=True)
        _init_like_torchvision(model)
    return model


def cifar_resnet(depth: int = 20, num_classes: int = 10, seed: int = 0) -> ResNet:
    """He et al.'s CIFAR ResNet (depth = 6n+2, e.g. 20 or 56) for 3x32x32 input, projection shortcuts."""
    if depth < 8 or (depth - 2) % 6:
        raise UsageError(f"depth: a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110), got {depth}")
    if num_classes < 1:
        raise UsageError(f"num_classes must be positive, got {num_classes}")
    per_stage = (depth - 2) // 6
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNet(BasicBlock, (per_stage,) * 3, num_classes, 16, 3, imagenet_stem=False)
        _init_like_torchvision(model)
    return model


def _projection(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))


def _init_like_torchvision(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
