"""Dense-prediction and odd-op CNNs: U-Net (Resize or ConvTranspose up path, skip concat), a two-output
net, and a net with PReLU, LeakyReLU, Tanh, MaxPool and AvgPool.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.archs.common import conv_bn


class UNet(nn.Module):
    """Two-level U-Net on 16x16. `up` is "nearest" or "bilinear" (Resize) or "convtranspose".

    The ConvTranspose variant makes a producer whose output channels sit on weight axis 1, with a BN
    after it; the Resize variants carry channels through an op that never mixes them.
    """

    def __init__(self, up: str) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(conv_bn(3, 8), conv_bn(8, 8))
        self.enc2 = nn.Sequential(conv_bn(8, 16), conv_bn(16, 16))
        self.mid = conv_bn(16, 16)
        self.pool = nn.MaxPool2d(2)
        self.up2 = self._up(up, 16)
        self.dec2 = conv_bn(32, 16)
        self.up1 = self._up(up, 16)
        self.dec1 = conv_bn(24, 8)
        self.head = nn.Conv2d(8, 2, 1)

    @staticmethod
    def _up(mode: str, channels: int) -> nn.Module:
        if mode == "convtranspose":
            return nn.Sequential(
                nn.ConvTranspose2d(channels, channels, 2, stride=2, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            )
        align = False if mode == "bilinear" else None
        return nn.Upsample(scale_factor=2, mode=mode, align_corners=align)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


class TwoHead(nn.Module):
    """A shared backbone with two outputs: class logits (GAP + Linear) and a dense 3-channel map."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(conv_bn(3, 8), conv_bn(8, 16, stride=2), conv_bn(16, 16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)
        self.dense = nn.Sequential(conv_bn(16, 8), nn.Conv2d(8, 3, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x)
        return self.fc(torch.flatten(self.pool(f), 1)), self.dense(f)


class MiscActs(nn.Module):
    """PReLU (per-channel slopes), LeakyReLU, Tanh, MaxPool, AvgPool, then GAP + Linear.

    None of these activations is zero for a negative input, so dead channels are planted with
    beta = 0 (a constant 0, which all of them keep at 0).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8, act=None),
            nn.PReLU(8),
            conv_bn(8, 12, act=None),
            nn.LeakyReLU(0.1),
            nn.MaxPool2d(2),
            conv_bn(12, 16, act=nn.Tanh),
            nn.AvgPool2d(2),
            conv_bn(16, 16, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
