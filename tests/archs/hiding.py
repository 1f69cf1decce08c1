"""Blocks where dead filters hide: depthwise blocks, zero padding, residual streams, splits and YOLO necks.

Each `HidingArch` plants dead channels at chosen positions (a BN with gamma = 0 and a shift that the
next activation maps to a constant) and says how many channel identities that kills: the number a
dead-filter pass must remove, exactly, on every export. The counts are derived in the comments; a
channel that is constant but tied to a live one (a residual sum with a live operand) is not planted.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tests.archs.common import conv_bn, randomize


class InvertedResidual(nn.Module):
    """1x1 expand -> BN -> ReLU6 -> 3x3 depthwise (padded) -> BN -> ReLU6 -> 1x1 project -> BN (+ skip)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.expand = conv_bn(channels, hidden, 1, act=nn.ReLU6)
        self.dw = conv_bn(hidden, hidden, 3, groups=hidden, act=nn.ReLU6)
        self.project = conv_bn(hidden, channels, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.dw(self.expand(x)))


class InvertedResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, act=nn.ReLU6)
        self.block1 = InvertedResidual(16, 32)
        self.block2 = InvertedResidual(16, 32)
        self.head = conv_bn(16, 24, 1, act=nn.ReLU6)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.block2(self.block1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class InceptionNet(nn.Module):
    """Four branches concatenated; two pass dead channels through a padded count-including AvgPool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3)
        self.b1 = conv_bn(16, 8, 1)
        self.b2a = conv_bn(16, 8, 1)
        self.b2b = conv_bn(8, 8, 3)
        self.b3 = conv_bn(16, 8, 1)  # conv -> pool
        self.b4 = conv_bn(16, 8, 1)  # pool -> conv (Inception's pool branch)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
        self.head = conv_bn(32, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        y = torch.cat([self.b1(s), self.b2b(self.b2a(s)), self.pool(self.b3(s)), self.b4(self.pool(s))], 1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.head(y), 1), 1))


class OSANet(nn.Module):
    """VoVNet one-shot aggregation: layers of 1x1 conv + padded 3x3 depthwise, all concatenated once."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3)
        self.layers = nn.ModuleList(
            nn.Sequential(conv_bn(cin, 8, 1), conv_bn(8, 8, 3, groups=8)) for cin in (16, 8, 8)
        )
        self.aggregate = conv_bn(16 + 3 * 8, 24, 1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        outs = [y]
        for layer in self.layers:
            y = layer(y)
            outs.append(y)
        z = self.aggregate(torch.cat(outs, 1))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(z, 1), 1))


class Res2NetBlock(nn.Module):
    """1x1 conv -> split in 4 -> hierarchical 3x3 convs (x_i + y_{i-1}), first split padded-avg-pooled
    -> concat -> 1x1 conv -> BN, plus the shortcut, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3)
        self.reduce = conv_bn(16, 16, 1)
        self.k = nn.ModuleList(conv_bn(4, 4, 3) for _ in range(3))
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.expand = conv_bn(16, 16, 1, act=None)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        x1, x2, x3, x4 = torch.split(self.reduce(s), 4, dim=1)
        y2 = self.k[0](x2)
        y3 = self.k[1](x3 + y2)
        y4 = self.k[2](x4 + y3)
        out = torch.relu(s + self.expand(torch.cat([self.pool(x1), y2, y3, y4], 1)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


class C2f(nn.Module):
    """YOLOv8's C2f: 1x1 conv, chunk(2), a residual bottleneck on the second half, concat, 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, act=nn.SiLU)
        self.cv1 = conv_bn(16, 16, 1, act=nn.SiLU)
        self.m1 = conv_bn(8, 8, 3, act=nn.SiLU)
        self.m2 = conv_bn(8, 8, 3, act=nn.SiLU)
        self.cv2 = conv_bn(24, 16, 1, act=nn.SiLU)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(self.stem(x)).chunk(2, 1))
        y.append(y[-1] + self.m2(self.m1(y[-1])))
        z = self.cv2(torch.cat(y, 1))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(z, 1), 1))


class SPPF(nn.Module):
    """YOLO's SPPF: 1x1 conv, three chained 5x5 max pools (padded), concat of all four, 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, act=nn.SiLU)
        self.cv1 = conv_bn(16, 8, 1, act=nn.SiLU)
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.cv2 = conv_bn(32, 16, 1, act=nn.SiLU)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(self.stem(x))]
        y.extend(self.pool(y[-1]) for _ in range(3))
        z = self.cv2(torch.cat(y, 1))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(z, 1), 1))


@dataclass(frozen=True)
class HidingArch:
    """plant: BN module name -> (channels, shift) planted with gamma = 0; removed: how many channel
    identities those plants make dead (derived in ARCHS' comments)."""

    name: str
    factory: Callable[[], nn.Module]
    plant: dict[str, tuple[tuple[int, ...], float]]
    removed: int
    input_shape: tuple[int, int, int] = (3, 16, 16)

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())

    @property
    def planted_count(self) -> int:
        return sum(len(channels) for channels, _ in self.plant.values())

    @torch.no_grad()
    def planted(self) -> nn.Module:
        torch.manual_seed(self.seed % 2**31)
        model = randomize(self.factory(), np.random.default_rng(self.seed))
        modules = dict(model.named_modules())
        for name, (channels, shift) in self.plant.items():
            bn = modules[name]
            assert isinstance(bn, nn.BatchNorm2d), name
            bn.weight[list(channels)] = 0.0
            bn.bias[list(channels)] = shift
        return model

    def example(self, batch: int = 2) -> torch.Tensor:
        rng = np.random.default_rng(self.seed + 2)
        return torch.from_numpy(rng.standard_normal((batch, *self.input_shape)).astype(np.float32))


ZERO_RELU = -4.0  # gamma 0, shift -4: exactly 0 after ReLU and ReLU6
ZERO_SILU = 0.0  # silu(0) = 0

ARCHS: dict[str, HidingArch] = {
    a.name: a
    for a in [
        # block1: expand {0, 1} and depthwise {2, 3} share identities (expand c feeds only depthwise c):
        # 4. block2: expand {5}, depthwise {5, 6}: 2. Residual stream channel 7: the stem makes it 0,
        # block1's projection adds 0.5 and block2's -0.25, so it is a constant 0, 0.5, 0.25 read only by
        # 1x1 convs (folded): 1. head {3} -> GAP -> Linear: 1. Total 8.
        HidingArch(
            "inverted_residual",
            InvertedResidualNet,
            {
                "block1.expand.1": ((0, 1), ZERO_RELU),
                "block1.dw.1": ((2, 3), ZERO_RELU),
                "block2.expand.1": ((5,), ZERO_RELU),
                "block2.dw.1": ((5, 6), ZERO_RELU),
                "stem.1": ((7,), ZERO_RELU),
                "block1.project.1": ((7,), 0.5),
                "block2.project.1": ((7,), -0.25),
                "head.1": ((3,), ZERO_RELU),
            },
            removed=8,
        ),
        # stem {1, 2}: read by three 1x1 convs and, through the padded pool, a fourth: 2. b1 {0}, b2a {1},
        # b2b {2}, b3 {3, 4} (through the padded count-including pool into the concat), b4 {5},
        # head {5}: 1 + 1 + 1 + 2 + 1 + 1. Total 9.
        HidingArch(
            "inception_pool",
            InceptionNet,
            {
                "stem.1": ((1, 2), ZERO_RELU),
                "b1.1": ((0,), ZERO_RELU),
                "b2a.1": ((1,), ZERO_RELU),
                "b2b.1": ((2,), ZERO_RELU),
                "b3.1": ((3, 4), ZERO_RELU),
                "b4.1": ((5,), ZERO_RELU),
                "head.1": ((5,), ZERO_RELU),
            },
            removed=9,
        ),
        # stem {0}: 1. layer 0: 1x1 {1} feeds only its padded depthwise, whose {2} is also planted:
        # one identity group, 2. layer 1: 1x1 {3} and depthwise {3}: 1. layer 2 depthwise {5}: 1.
        # aggregate {1}: 1. Total 6.
        HidingArch(
            "vovnet_osa_dw",
            OSANet,
            {
                "stem.1": ((0,), ZERO_RELU),
                "layers.0.0.1": ((1,), ZERO_RELU),
                "layers.0.1.1": ((2,), ZERO_RELU),
                "layers.1.0.1": ((3,), ZERO_RELU),
                "layers.1.1.1": ((3,), ZERO_RELU),
                "layers.2.1.1": ((5,), ZERO_RELU),
                "aggregate.1": ((1,), ZERO_RELU),
            },
            removed=6,
        ),
        # reduce {0} (split 1, through the padded pool into the concat) and {5} (split 2, read by a
        # padded 3x3 conv): 2. k[2] {2} (y4, only in the concat): 1. k[0] {1} with reduce {9}
        # (x3 channel 1): y2 + x3 is 0 + 0, so that identity dies too: 1 (one identity, two producers).
        # Total 4.
        HidingArch(
            "res2net_split",
            Res2NetBlock,
            {
                "reduce.1": ((0, 5, 9), ZERO_RELU),
                "k.2.1": ((2,), ZERO_RELU),
                "k.0.1": ((1,), ZERO_RELU),
            },
            removed=4,
        ),
        # cv1 {1} (first chunk, straight into the concat): 1. cv1 {11} (second chunk, channel 3) with
        # m2 {3}: the residual y + m2(m1(y)) is 0 + 0, one identity: 1. m1 {4} (read by m2's padded
        # 3x3): 1. cv2 {2}: 1. Total 4.
        HidingArch(
            "c2f_chunk",
            C2f,
            {
                "cv1.1": ((1, 11), ZERO_SILU),
                "m2.1": ((3,), ZERO_SILU),
                "m1.1": ((4,), ZERO_SILU),
                "cv2.1": ((2,), ZERO_SILU),
            },
            removed=4,
        ),
        # Non-zero constants where zero padding meets them must stay: expand {0} is ReLU6(2) = 2, and
        # the padded depthwise conv sees 2 inside and 0 at the border, so channel 0 varies: kept.
        # depthwise {2} is 2 everywhere, read by the 1x1 projection only: folded, removed: 1.
        HidingArch(
            "inverted_residual_nonzero",
            InvertedResidualNet,
            {"block1.expand.1": ((0,), 2.0), "block1.dw.1": ((2,), 2.0)},
            removed=1,
        ),
        # b3 {3} is ReLU(1) = 1 before the padded count-including pool: its border differs, kept. b1 {0}
        # is 1 straight into the concat and the 1x1 head: folded, removed: 1.
        HidingArch(
            "inception_pool_nonzero",
            InceptionNet,
            {"b3.1": ((3,), 1.0), "b1.1": ((0,), 1.0)},
            removed=1,
        ),
        # cv1 {2, 5}: 0 through three padded max pools is 0, concatenated four times: 2. cv2 {1}: 1.
        HidingArch(
            "sppf",
            SPPF,
            {"cv1.1": ((2, 5), ZERO_SILU), "cv2.1": ((1,), ZERO_SILU)},
            removed=3,
        ),
    ]
}
