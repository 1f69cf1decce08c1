"""Digits at 32x32x3, and ImageNet-shaped networks trained on it: weights that make an accuracy proxy mean something.

A pruning benchmark on random weights can only compare outputs that carry no information (every
compact model disagrees with the original on every input). Trained on scikit-learn's digits the same
networks (ResNet-50, MobileNetV2 with a 10-class head) classify for real in a couple of minutes of
CPU, so top-1 agreement with the original and validation accuracy separate a good pruning plan from
a bad one: 8 epochs reach 0.93 (ResNet-50, 76 s) and 0.92 (MobileNetV2, 35 s) validation accuracy
on 2 CPU threads (a lightly loaded shared machine, wall time).

Images: `deploysparse.zoo.digits.load_digits_data` (8x8 upsampled to 16x16 by pixel repetition and
standardised with the training split's statistics), repeated twice more to 32x32 (pixel repetition
again, so an 8x8 pixel becomes a 4x4 block and the standardisation still holds) and to 3 channels.
Training: Adam (lr 2e-3, cosine decay to 0) with coupled L2 weight decay, a fixed sample order, then
the BatchNorm statistics recomputed over the training split: with 20 steps an epoch the running
averages (momentum 0.1) still remember the early, untrained steps (in a trial, MobileNetV2 after 3
epochs scored 0.07 validation accuracy with them and 0.77 with recomputed ones). The state_dict is cached under a name that carries every training setting, so reruns skip it.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deploysparse.atomic import atomic_path
from deploysparse.zoo.digits import load_digits_data

SIZE = 32
BATCH = 64
LR = 2e-3
WEIGHT_DECAY = 1e-4
DEFAULT_CACHE = Path.home() / ".cache" / "deploysparse" / "bench"


def digits32(split: str, limit: int | None = None, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Images (N,3,size,size) float32 (size a multiple of 16: 32 unless asked), standardised like the
    bundled digits model's input, and labels (N,)."""
    images, labels = load_digits_data(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if size % images.shape[-1]:
        raise ValueError(f"digits images are {images.shape[-1]} pixels wide: size {size} is no multiple")
    factor = size // images.shape[-1]
    images = images.repeat(factor, axis=2).repeat(factor, axis=3).repeat(3, axis=1)
    return np.ascontiguousarray(images, dtype=np.float32), labels


@dataclass(frozen=True)
class Training:
    """Every setting that changes the trained weights; `tag` names the cached file after them."""

    epochs: int
    subset: int | None = None  # first N training images only (tests); None: the whole split
    seed: int = 0
    size: int = SIZE  # input height and width (the same digits, more pixel repetition)

    def tag(self, name: str) -> str:
        slug = name.lower().replace("-", "")
        return (
            f"{slug}-digits{self.size}-e{self.epochs}-n{self.subset or 'all'}-s{self.seed}"
            f"-lr{LR:g}-wd{WEIGHT_DECAY:g}-b{BATCH}.pt"
        )


def accuracy(module: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the module in eval mode."""
    module.eval()
    with torch.no_grad():
        logits = torch.cat(
            [module(torch.from_numpy(images[i : i + 256])) for i in range(0, len(images), 256)]
        )
    return float((logits.argmax(1).numpy() == labels).mean())


def recompute_bn_stats(module: nn.Module, images: np.ndarray) -> None:
    """Set every BatchNorm's running mean and variance to the averages over `images` (no gradients)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    module.eval()
    saved = []
    for norm in norms:
        saved.append(norm.momentum)
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
        norm.train()
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            module(torch.from_numpy(images[start : start + BATCH]))
    for norm, momentum in zip(norms, saved, strict=True):
        norm.momentum = momentum
    module.eval()


def bn_reestimated_accuracy(module: nn.Module) -> float:
    """Validation accuracy of a copy of `module` after `recompute_bn_stats` on the training split.

    Removing channels shifts the mean and variance of every activation downstream, so the running
    statistics of a pruned network no longer normalise anything: without fine-tuning, these networks
    fall to chance (0.1) at 70% of the MACs whatever was removed. Re-estimating the statistics (no
    gradient step, no weight changes; "adaptive BN" in EagleEye, Li et al. 2020) shows how much of
    the network the pruning left working.
    """
    module = copy.deepcopy(module)
    recompute_bn_stats(module, digits32("train")[0])
    return accuracy(module, *digits32("val"))


def train(module: nn.Module, training: Training) -> nn.Module:
    """Adam with L2 weight decay and a cosine learning rate for `training.epochs` epochs in a seeded order,
    then fresh BN statistics."""
    images, labels = digits32("train", training.subset, training.size)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    rng = np.random.default_rng(training.seed)
    optimiser = torch.optim.Adam(module.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = training.epochs * -(-len(images) // BATCH)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training.seed)  # dropout masks
        for _ in range(training.epochs):
            module.train()
            order = torch.from_numpy(rng.permutation(len(images)))
            for start in range(0, len(order), BATCH):
                idx = order[start : start + BATCH]
                if len(idx) < 2:  # BatchNorm needs two samples in train mode
                    continue
                optimiser.zero_grad()
                nn.functional.cross_entropy(module(x_all[idx]), y_all[idx]).backward()
                optimiser.step()
                schedule.step()
    recompute_bn_stats(module, images)
    return module.eval()


def trained(name: str, build: Callable[[], nn.Module], training: Training, cache: Path) -> nn.Module:
    """`build()` with weights trained on digits32: from `cache` when a matching file exists, else trained
    now and saved there. Loaded with weights_only=True, so a cached file never runs code."""
    module = build()
    path = Path(cache) / training.tag(name)
    if path.exists():
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return module.eval()
    wall, cpu = time.perf_counter(), time.process_time()
    train(module, training)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    val = digits32("val", size=training.size)
    print(
        f"{name}: trained {training.epochs} epochs in {wall:.0f} s wall, {cpu:.0f} s CPU "
        f"({torch.get_num_threads()} threads), validation accuracy {accuracy(module, *val):.3f}",
        file=sys.stderr,
        flush=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(module.state_dict(), tmp)
    return module.eval()
