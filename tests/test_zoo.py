"""The model zoo: architectures match their references, the bundled demo model loads safely, classifies
digits, and really carries dead filters."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn as nn

from deploysparse.errors import ModelLoadError, UsageError
from deploysparse.zoo import digits
from deploysparse.zoo.mobilenet import mobilenet_v2
from deploysparse.zoo.resnet import cifar_resnet, resnet

ENTRY_POINT = "deploysparse.zoo.digits:digits_model"


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Reference parameter counts of torchvision's resnet18/34/50/101 and mobilenet_v2 (1000 classes).
@pytest.mark.parametrize(
    ("depth", "expected"), [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160)]
)
def test_resnet_parameter_counts_match_torchvision(depth: int, expected: int) -> None:
    assert n_params(resnet(depth)) == expected


def test_mobilenet_v2_parameter_count_matches_torchvision() -> None:
    assert n_params(mobilenet_v2()) == 3_504_872
    assert abs(n_params(mobilenet_v2()) - 3.5e6) < 0.1e6


def test_resnet50_has_torchvision_module_names() -> None:
    keys = set(resnet(50).state_dict())
    for key in ("conv1.weight", "layer1.0.downsample.0.weight", "layer4.2.bn3.running_var", "fc.bias"):
        assert key in keys
    assert "layer1.1.downsample.0.weight" not in keys


@pytest.mark.parametrize(
    ("build", "shape", "classes"),
    [
        (lambda: resnet(50), (2, 3, 224, 224), 1000),
        (lambda: resnet(18, num_classes=7, width=16, in_channels=1), (3, 1, 64, 64), 7),
        (lambda: cifar_resnet(20), (2, 3, 32, 32), 10),
        (lambda: cifar_resnet(56, num_classes=100), (1, 3, 32, 32), 100),
        (lambda: mobilenet_v2(), (2, 3, 224, 224), 1000),
        (lambda: mobilenet_v2(num_classes=5, width_mult=0.5), (2, 3, 96, 96), 5),
    ],
)
def test_forward_shapes(build, shape: tuple[int, ...], classes: int) -> None:
    model = build().eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], classes)
    assert torch.isfinite(out).all()
    assert out.std() > 0


def test_cifar_resnet_depth_sets_block_count() -> None:
    blocks = [m for m in cifar_resnet(56).modules() if m.__class__.__name__ == "BasicBlock"]
    assert len(blocks) == 27


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = resnet(18, width=8).state_dict()
    second = resnet(18, width=8).state_dict()
    assert torch.equal(torch.rand(3), expected_next)
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = resnet(18, width=8, seed=1).state_dict()
    assert not torch.equal(first["conv1.weight"], other["conv1.weight"])


@pytest.mark.parametrize(
    "build",
    [
        lambda: resnet(42),
        lambda: resnet(50, width=0),
        lambda: cifar_resnet(21),
        lambda: mobilenet_v2(width_mult=0),
    ],
)
def test_bad_architecture_options_raise_usage_error(build) -> None:
    with pytest.raises(UsageError):
        build()


@pytest.mark.parametrize(
    "build", [lambda: resnet(18, width=8), lambda: mobilenet_v2(width_mult=0.25), digits.build_digits_vgg]
)
def test_activations_are_not_in_place_so_hooks_see_pre_activation_values(build) -> None:
    assert not any(getattr(m, "inplace", False) for m in build().modules())


def test_digits_vgg_flattens_a_spatial_map_into_the_classifier() -> None:
    model = digits.build_digits_vgg()
    linear = model[-1]
    assert isinstance(model[1], nn.Flatten)
    assert linear.in_features == 256 * 2 * 2
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    out = model.eval()(torch.randn(4, *digits.INPUT_SHAPE[1:]))
    assert out.shape == (4, 10)
    with pytest.raises(UsageError):
        digits.build_digits_vgg(width=(8, 8))


def test_digits_asset_is_sklearn_digits_with_a_fixed_disjoint_split(tmp_path) -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    regenerated = tmp_path / "digits_data.npz"
    digits.make_digits_data(regenerated)
    with np.load(digits.DATA_FILE) as committed, np.load(regenerated) as fresh:
        for key in ("images", "labels", "split"):
            np.testing.assert_array_equal(committed[key], fresh[key])
        np.testing.assert_array_equal(committed["images"], load_digits().images.astype(np.uint8))
        assert np.bincount(committed["split"]).tolist() == [1257, 180, 360]


def test_digits_splits_are_normalised_with_the_documented_constants() -> None:
    mean, std = digits.training_pixel_stats()
    assert mean == pytest.approx(digits.PIXEL_MEAN, abs=1e-5)
    assert std == pytest.approx(digits.PIXEL_STD, abs=1e-5)
    x, y = digits.load_digits_data("train")
    assert x.dtype == np.float32 and x.shape == (1257, 1, 16, 16)
    assert y.dtype == np.int64 and set(y.tolist()) == set(range(10))
    assert abs(float(x.mean())) < 1e-2 and abs(float(x.std()) - 1) < 2e-2
    # Nearest upsampling: every 2x2 block holds one original pixel.
    np.testing.assert_array_equal(x[:, :, ::2, ::2], x[:, :, 1::2, 1::2])
    with pytest.raises(UsageError):
        digits.load_digits_data("holdout")


def test_calibration_and_validation_sets() -> None:
    calib = digits.calibration_set(64)
    train_x, _ = digits.load_digits_data("train")
    np.testing.assert_array_equal(calib, train_x[:64])
    assert digits.calibration_set().shape == (256, 1, 16, 16)
    val_x, val_y = digits.validation_set()
    assert val_x.shape == (180, 1, 16, 16) and val_y.shape == (180,)
    with pytest.raises(UsageError):
        digits.calibration_set(0)
    with pytest.raises(UsageError):
        digits.calibration_set(10_000)


@pytest.fixture(scope="module")
def bundled() -> nn.Module:
    return digits.digits_model()


def test_entry_point_string_resolves_to_the_bundled_model(bundled: nn.Module) -> None:
    module_name, attr = ENTRY_POINT.split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    model = factory()
    assert not model.training
    x = torch.from_numpy(digits.calibration_set(8))
    with torch.no_grad():
        torch.testing.assert_close(model(x), bundled(x))


def test_bundled_checkpoint_is_a_plain_state_dict_and_classifies_the_test_split(bundled: nn.Module) -> None:
    state = torch.load(digits.BUNDLED_WEIGHTS, map_location="cpu", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    x, y = digits.load_digits_data("test")
    with torch.no_grad():
        accuracy = (bundled(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert accuracy >= 0.97


def test_bundled_model_has_dead_filters_that_output_a_constant(bundled: nn.Module) -> None:
    """Real implicit sparsity: many |gamma| < 1e-3, and each such filter's ReLU output barely moves."""
    features = bundled[0]
    bns = [m for m in features if isinstance(m, nn.BatchNorm2d)]
    dead = [(bn.weight.abs() < 1e-3) for bn in bns]
    assert sum(int(d.sum()) for d in dead) >= 0.1 * sum(bn.num_features for bn in bns)

    activations: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: activations.append(out.clone()))
        for m in features
        if isinstance(m, nn.ReLU)
    ]
    x = torch.from_numpy(digits.load_digits_data("val")[0])
    with torch.no_grad():
        bundled(x)
    for hook in hooks:
        hook.remove()
    for act, mask, bn in zip(activations, dead, bns, strict=True):
        if mask.any():
            spread = act[:, mask].amax(dim=(0, 2, 3)) - act[:, mask].amin(dim=(0, 2, 3))
            constant = torch.relu(bn.bias[mask]).detach()
            assert spread.max() < 1e-2
            torch.testing.assert_close(act[:, mask].mean(dim=(0, 2, 3)), constant, atol=1e-2, rtol=0)


def test_bad_checkpoints_raise_model_load_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="no such checkpoint"):
        digits.digits_model(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"garbage\.pt"):
        digits.digits_model(garbage)
    wrong = tmp_path / "wrong.pt"
    torch.save(digits.build_digits_vgg(width=(8, 8, 8, 8, 8, 8)).state_dict(), wrong)
    with pytest.raises(ModelLoadError, match="does not fit"):
        digits.digits_model(wrong)


def test_random_init_factory_is_seeded() -> None:
    first, second = digits.digits_model(weights=None), digits.digits_model(weights=None)
    x = torch.from_numpy(digits.calibration_set(4))
    with torch.no_grad():
        torch.testing.assert_close(first(x), second(x))
