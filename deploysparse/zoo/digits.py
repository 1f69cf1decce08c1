"""The bundled demo model: a small VGG-style CNN on 16x16 handwritten digits with real implicit sparsity.

Trained with Adam and coupled L2 (examples/train_digits.py), BN+ReLU networks end up with filters whose
BN scale is ~0, so they output a constant whatever the input (Mehta et al., CVPR 2019). This model
carries such dead filters for real, so `deploysparse demo` and the tests show the tool on a trained
network rather than on zeroed weights. Its classifier flattens a 256x2x2 map into a Linear layer, so
pruning a last-stage filter must also remove its 4 columns of the Gemm.

Data: scikit-learn's `load_digits` (1797 images, 8x8, grey levels 0..16). The pixels, labels and a
fixed split are committed in `assets/digits_data.npz`, so loading needs neither scikit-learn nor a
download. The split is a permutation from `numpy.random.default_rng(0)`: the first 360 images are
the test split, the next 180 validation, the remaining 1257 training. Each image is upsampled to
16x16 by pixel repetition (nearest neighbour, exact), divided by 16, then standardised with the
training split's mean and standard deviation (`PIXEL_MEAN`, `PIXEL_STD`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deploysparse.errors import ModelLoadError, UsageError

if TYPE_CHECKING:
    import torch.nn as nn

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_WEIGHTS = ASSETS / "digits_vgg.pt"
DATA_FILE = ASSETS / "digits_data.npz"

INPUT_SHAPE = (1, 1, 16, 16)
SPLITS = ("train", "val", "test")
SPLIT_SEED = 0
TEST_SIZE = 360
VAL_SIZE = 180
# Mean and std of the training split's pixels after scaling to [0, 1] (computed by
# `training_pixel_stats`, checked against it by tests/test_zoo.py).
PIXEL_MEAN = 0.30521
PIXEL_STD = 0.37610


def build_digits_vgg(
    width: tuple[int, ...] = (64, 64, 128, 128, 256, 256), num_classes: int = 10
) -> nn.Module:
    """Six 3x3 Conv-BN-ReLU layers, a 2x2 max-pool after every second one, then Flatten -> Linear.

    16x16 input -> 8x8 -> 4x4 -> 2x2, so the classifier reads width[-1]*4 features: the
    flatten-into-Gemm channel mapping is part of every export of this model.
    """
    import torch.nn as nn

    if len(width) != 6 or any(int(w) < 1 for w in width):
        raise UsageError(f"width: expected 6 positive channel counts, got {tuple(width)}")
    layers: list[nn.Module] = []
    in_ch = INPUT_SHAPE[1]
    for index, out_ch in enumerate(width):
        layers += [
            nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
        ]
        if index % 2 == 1:
            layers.append(nn.MaxPool2d(2))
        in_ch = out_ch
    spatial = INPUT_SHAPE[2] // 8
    return nn.Sequential(
        nn.Sequential(*layers),
        nn.Flatten(),
        nn.Linear(in_ch * spatial * spatial, num_classes),
    )


def build_digits_mobilenet(num_classes: int = 10) -> nn.Module:
    """A MobileNetV2-style net for the 16x16 digits: stem, five inverted residuals (1x1 expand with
    ReLU6, 3x3 depthwise with ReLU6, linear 1x1 projection, skips where shapes match), a 1x1 conv to
    128, global average pool, Linear. 16x16 -> 8x8 -> 4x4; every depthwise conv is padded."""
    import torch.nn as nn

    from deploysparse.zoo.mobilenet import ConvBNReLU6, InvertedResidual

    blocks = [(32, 16, 1, 1), (16, 24, 2, 6), (24, 24, 1, 6), (24, 32, 2, 6), (32, 32, 1, 6)]
    layers: list[nn.Module] = [ConvBNReLU6(INPUT_SHAPE[1], 32)]
    layers += [InvertedResidual(cin, cout, stride, expand) for cin, cout, stride, expand in blocks]
    layers.append(ConvBNReLU6(32, 128, kernel=1))
    return nn.Sequential(
        nn.Sequential(*layers),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    )


def digits_model(weights: str | os.PathLike[str] | None = "bundled") -> nn.Module:
    """Entry point `deploysparse.zoo.digits:digits_model`: the trained demo model in eval mode.

    `weights` is "bundled" (the committed checkpoint), a path to a state_dict saved by
    examples/train_digits.py, or None for a seeded random initialisation. Checkpoints are read with
    `weights_only=True`, so loading one never runs code from the file.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_digits_vgg()
    if weights is not None:
        path = BUNDLED_WEIGHTS if weights == "bundled" else Path(weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise ModelLoadError(f"{path}: no such checkpoint") from exc
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a loadable state_dict ({type(exc).__name__}: {exc})") from exc
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            first_line = str(exc).strip().splitlines()[0]
            raise ModelLoadError(f"{path}: does not fit the digits VGG ({first_line})") from exc
    return model.eval()


def load_digits_data(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N,1,16,16) float32, normalised as the model was trained, and labels (N,) int64."""
    if split not in SPLITS:
        raise UsageError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    with np.load(DATA_FILE) as data:
        mask = data["split"] == SPLITS.index(split)
        images = data["images"][mask]
        labels = data["labels"][mask].astype(np.int64)
    return _normalise(images), labels


def calibration_set(n: int = 256) -> np.ndarray:
    """The first `n` training images (N,1,16,16) float32: activation statistics and INT8 calibration."""
    images, _ = load_digits_data("train")
    if not 1 <= n <= len(images):
        raise UsageError(f"n: expected 1..{len(images)} calibration images, got {n}")
    return images[:n]


def validation_set() -> tuple[np.ndarray, np.ndarray]:
    """The validation split (images, labels): to compare an original and a pruned model on held-out data."""
    return load_digits_data("val")


def make_digits_data(path: str | os.PathLike[str] = DATA_FILE) -> None:
    """Regenerate `assets/digits_data.npz` from scikit-learn (needed only to rebuild the asset)."""
    from sklearn.datasets import load_digits

    from deploysparse.atomic import atomic_path

    digits = load_digits()
    images = digits.images.astype(np.uint8)
    split = np.zeros(len(images), dtype=np.uint8)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    split[order[:TEST_SIZE]] = SPLITS.index("test")
    split[order[TEST_SIZE : TEST_SIZE + VAL_SIZE]] = SPLITS.index("val")
    split[order[TEST_SIZE + VAL_SIZE :]] = SPLITS.index("train")
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, images=images, labels=digits.target.astype(np.uint8), split=split)


def training_pixel_stats() -> tuple[float, float]:
    """Mean and std of the training pixels after upsampling and scaling: the source of PIXEL_MEAN/STD."""
    with np.load(DATA_FILE) as data:
        images = data["images"][data["split"] == SPLITS.index("train")]
    scaled = _upsample(images) / 16.0
    return float(scaled.mean()), float(scaled.std())


def _upsample(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32).repeat(2, axis=1).repeat(2, axis=2)[:, None]


def _normalise(images: np.ndarray) -> np.ndarray:
    scaled = _upsample(images) / np.float32(16.0)
    return ((scaled - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)).astype(np.float32)
