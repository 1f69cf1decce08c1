"""Accuracy recovery for the bundled digits CNN: the `finetune` function a sweep names.

    # in sweep.yaml (examples/sweep-digits-finetune.yaml)
    finetune:
      function: finetune_digits:finetune     # this file; found in the sweep file's folder
      args: {epochs: 2}

A sweep hands `finetune` the compact nn.Module (`deploysparse.torch.apply_plan` has removed the same
channels as the ONNX surgery) and exports what it returns. Training uses the digits training split
only, so validation and test accuracy stay held out. Seeded, two threads, a few seconds per epoch.
"""

from __future__ import annotations

import torch
from torch import nn

from deploysparse.zoo.digits import load_digits_data


def finetune(
    module: nn.Module, epochs: int = 1, lr: float = 1e-3, batch: int = 32, seed: int = 0, threads: int = 1
) -> nn.Module:
    """Train `module` for `epochs` on the digits training split (Adam, cross-entropy); return it in eval mode."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images, labels = (torch.from_numpy(a) for a in load_digits_data("train"))
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(epochs):
        for index in torch.randperm(len(images), generator=order).split(batch):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(module(images[index]), labels[index]).backward()
            optimizer.step()
    return module.eval()


def held_out_set() -> tuple:
    """The digits test split (inputs, labels): held out from training and from the sweep's calibration."""
    return load_digits_data("test")
