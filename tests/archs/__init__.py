"""Small real-architecture CNNs for surgery tests, each with the BN beta that makes its planted
channels dead.

`ARCHS` maps a name to an `Arch`; `Arch.build()` returns a deterministic eval-mode model with random
BN statistics, and `Arch.planted(fraction)` the same model with dead channels planted. `TOKEN_ARCHS`
holds the ConvNeXt-, ViT- and Swin-shaped nets (LayerNorms, channels on the last axis).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tests.archs.classic import DenseNet, ResNetBasic, ResNetBottleneck, ResNeXt, VGGFlatten
from tests.archs.common import plant_dead, randomize
from tests.archs.dense import MiscActs, TwoHead, UNet
from tests.archs.mobile import MobileNetV2, SENet, ShuffleNet
from tests.archs.tokens import TinyConvNeXt, TinySwin, TinyViT


@dataclass(frozen=True)
class Arch:
    """One test architecture.

    dead_beta: the BN shift planted with gamma = 0; it makes the channel exactly 0 after the net's
    activations. outputs: the number of graph outputs.
    """

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, int, int] = (3, 16, 16)
    dead_beta: float = -4.0
    outputs: int = 1

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())

    def build(self) -> nn.Module:
        """The model with deterministic random weights and BN statistics, in eval mode."""
        torch.manual_seed(self.seed % 2**31)
        return randomize(self.factory(), np.random.default_rng(self.seed))

    def planted(self, fraction: float = 0.3) -> nn.Module:
        """`build()` with `fraction` of every BN layer's channels made dead."""
        model = self.build()
        plant_dead(model, fraction, np.random.default_rng(self.seed + 1), beta=self.dead_beta)
        return model

    def planted_channels(self, fraction: float = 0.3) -> dict[str, list[int]]:
        """The channels `planted(fraction)` makes dead, per BN layer name."""
        return plant_dead(self.build(), fraction, np.random.default_rng(self.seed + 1), beta=self.dead_beta)

    def example(self, batch: int = 2) -> torch.Tensor:
        """A random input of the architecture's shape."""
        rng = np.random.default_rng(self.seed + 2)
        return torch.from_numpy(rng.standard_normal((batch, *self.input_shape)).astype(np.float32))


ARCHS: dict[str, Arch] = {
    a.name: a
    for a in [
        Arch("vgg_flatten", VGGFlatten),
        Arch("resnet_basic", ResNetBasic),
        Arch("resnet_bottleneck", ResNetBottleneck),
        Arch("resnext", ResNeXt),
        Arch("mobilenet_v2", MobileNetV2),
        Arch("se_hardswish", lambda: SENet(nn.Hardswish, nn.Hardsigmoid)),
        Arch("se_silu", lambda: SENet(nn.SiLU, nn.Sigmoid), dead_beta=0.0),
        Arch("densenet", DenseNet),
        Arch("unet_nearest", lambda: UNet("nearest")),
        Arch("unet_bilinear", lambda: UNet("bilinear")),
        Arch("unet_convtranspose", lambda: UNet("convtranspose")),
        Arch("two_head", TwoHead, outputs=2),
        Arch("shufflenet", ShuffleNet),
        Arch("misc_acts", MiscActs, dead_beta=0.0),
    ]
}

# Channels on the last axis (NHWC maps, tokens) and LayerNorms instead of BN: apart from ARCHS, whose
# tests plant dead filters through BN.
TOKEN_ARCHS: dict[str, Arch] = {
    a.name: a for a in [Arch("convnext", TinyConvNeXt), Arch("vit", TinyViT), Arch("swin", TinySwin)]
}
