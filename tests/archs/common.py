"""Helpers every test architecture shares: conv-BN-act blocks, random BN statistics, dead-filter planting.

BN layers get random running statistics so that folding BN into the conv (both torch exporters do it)
changes the weights for real; a test that passes with identity BN would miss a wrong fold.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tests.archs.tokens import ChannelsFirstLayerNorm


def conv_bn(
    cin: int,
    cout: int,
    kernel: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> activation, padding that keeps the spatial size at stride 1."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


@torch.no_grad()
def randomize(model: nn.Module, rng: np.random.Generator) -> nn.Module:
    """Give every BN layer non-trivial running statistics and affine parameters, every LayerNorm (and
    channels-first LayerNorm) a random scale and shift, and every layer scale, gamma or class token
    random values (fresh ones are 1, 0 or one constant, so a slice landing on the wrong channel would
    not show); put the model in eval."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.from_numpy(rng.normal(0.0, 0.5, c).astype(np.float32)))
            module.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, c).astype(np.float32)))
        if isinstance(module, nn.BatchNorm2d | nn.LayerNorm | ChannelsFirstLayerNorm):
            c = module.weight.shape[0]
            module.weight.data.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c).astype(np.float32)))
            module.bias.data.copy_(torch.from_numpy(rng.normal(0.0, 0.3, c).astype(np.float32)))
        for name in ("layer_scale", "gamma", "class_token"):
            value = getattr(module, name, None)
            if isinstance(value, nn.Parameter):
                value.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, tuple(value.shape)).astype(np.float32)))
    return model.eval()


def batchnorms(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """The model's BatchNorm2d layers with their qualified names, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


@torch.no_grad()
def plant_dead(
    model: nn.Module,
    fraction: float,
    rng: np.random.Generator,
    beta: float = -4.0,
    skip: tuple[str, ...] = (),
) -> dict[str, list[int]]:
    """Make some channels of every BN layer constant: gamma = 0, beta = `beta`.

    With beta = -4 the channel is exactly 0 after ReLU, ReLU6 and Hardswish (hardswish(x) = 0 for
    x <= -3); with beta = 0 it is exactly 0 after any activation with f(0) = 0 (SiLU, Tanh, PReLU).
    Every BN keeps at least one live channel. BN layers whose name starts with an entry of `skip` are
    left alone. Returns the planted channels per BN name.
    """
    planted: dict[str, list[int]] = {}
    for name, bn in batchnorms(model):
        if any(name.startswith(prefix) for prefix in skip):
            continue
        c = bn.num_features
        count = min(c - 1, max(1, round(fraction * c)))
        chosen = sorted(int(i) for i in rng.choice(c, size=count, replace=False))
        bn.weight[chosen] = 0.0
        bn.bias[chosen] = beta
        planted[name] = chosen
    return planted
