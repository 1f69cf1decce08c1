"""Activation statistics from torch hooks equal those ONNX Runtime computes on the exported graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from deploysparse.channel_stats import ChannelStatsAccumulator
from deploysparse.errors import CalibrationError
from deploysparse.frontend.torch_export import export_onnx
from deploysparse.frontend.torch_hooks import map_tensors
from deploysparse.frontend.torch_stats import collect_torch_stats


class Mixed(nn.Module):
    """Every activation kind the mapper derives, an in-place one, a depthwise conv and a shared conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.mid = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.Hardswish())
        self.pw = nn.Conv2d(8, 6, 1)
        self.bn = nn.BatchNorm2d(6)
        self.shared = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(self.mid(self.stem(x)))
        x = nn.functional.relu6(self.bn(self.pw(x)))
        x = self.shared(self.shared(x))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def _randomize(module: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.BatchNorm2d):
                sub.weight.copy_(torch.rand(sub.num_features, generator=generator) + 0.5)
                sub.bias.copy_(torch.randn(sub.num_features, generator=generator))
                sub.running_mean.copy_(torch.randn(sub.num_features, generator=generator) * 0.1)
                sub.running_var.copy_(torch.rand(sub.num_features, generator=generator) + 0.5)
    return module.eval()


def _ort_stats(model: onnx.ModelProto, calib: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {"input": calib}), strict=True))


@pytest.fixture(scope="module", params=["dynamo", "legacy"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    torch.manual_seed(0)
    module = _randomize(Mixed())
    path = export_onnx(
        module,
        torch.randn(1, 3, 8, 8),
        tmp_path_factory.mktemp(request.param) / "m.onnx",
        exporter=request.param,
    )
    return module, onnx.load(str(path))


def test_mapped_tensors_cover_modules_and_activations(exported: tuple) -> None:
    module, model = exported
    derived = map_tensors(module, model)
    modules = {d.module for d in derived.values()}
    assert {"stem.0", "stem.1", "mid.0", "mid.1", "dw.0", "dw.1", "pw", "bn", "fc"} <= modules
    assert "shared" not in modules
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    activations = {
        producers[t] for t, d in derived.items() if producers[t] not in ("Conv", "BatchNormalization")
    }
    assert {"Relu", "Mul", "HardSwish", "Clip", "Gemm"} <= activations


# Torch and ONNX Runtime compute every intermediate in float32 with their own kernels (summation order,
# fused BN, im2col vs direct convolution), so each value may differ by a few float32 roundings per
# accumulated product. The deepest accumulation here is a 72-term dot product repeated through about
# ten layers; 1e-5 of the tensor's largest magnitude bounds that with a wide margin (float32's
# epsilon is 1.2e-7). Every statistic's tolerance follows from this per-value bound.
_VALUE_REL_BOUND = 1e-5


def _statistic_tolerances(flat: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Bounds on how far each statistic can move when every value moves by at most `delta`.

    Mean, mean |x|, max and std are 1-Lipschitz in the largest per-value change, so they move by at
    most delta. The fraction of positive values moves only through values within delta of zero. A
    correlation is the cosine of two centred vectors; moving a vector of norm sqrt(n)*std by at most
    sqrt(n)*delta turns its direction by at most 2*delta/std, hence |d corr_ij| <= 2 delta (1/std_i +
    1/std_j), which is large only for near-constant channels.
    """
    delta = _VALUE_REL_BOUND * max(1.0, float(np.abs(flat).max()))
    near_zero = (np.abs(flat) <= delta).mean(axis=1)
    with np.errstate(divide="ignore"):
        inverse_std = np.where(flat.std(axis=1) > 0, 1.0 / flat.std(axis=1), np.inf)
    corr_tol = np.minimum(2.0 * delta * (inverse_std[:, None] + inverse_std[None, :]), 2.0)
    return delta, near_zero + 1e-12, corr_tol


def test_torch_statistics_equal_onnxruntime_intermediates(exported: tuple) -> None:
    module, model = exported
    calib = np.random.default_rng(5).standard_normal((20, 3, 8, 8)).astype(np.float32)
    stats = collect_torch_stats(module, calib, model, correlation=True, batch_size=7)
    names = sorted(stats)
    assert len(names) >= 13
    reference = _ort_stats(model, calib, names)
    for name in names:
        values = reference[name]
        flat = np.moveaxis(values, 1, 0).reshape(values.shape[1], -1).astype(np.float64)
        delta, frac_tol, corr_tol = _statistic_tolerances(flat)
        got = stats[name]
        assert got.count == flat.shape[1]
        np.testing.assert_allclose(got.mean, flat.mean(axis=1), rtol=0, atol=delta, err_msg=name)
        np.testing.assert_allclose(got.mean_abs, np.abs(flat).mean(axis=1), rtol=0, atol=delta, err_msg=name)
        np.testing.assert_allclose(got.std, flat.std(axis=1), rtol=0, atol=delta, err_msg=name)
        np.testing.assert_allclose(got.max, flat.max(axis=1), rtol=0, atol=delta, err_msg=name)
        assert np.all(np.abs(got.frac_positive - (flat > 0).mean(axis=1)) <= frac_tol), name
        with np.errstate(invalid="ignore", divide="ignore"):
            expected_corr = np.nan_to_num(np.corrcoef(flat), nan=0.0)
        np.fill_diagonal(expected_corr, 1.0)
        assert np.all(np.abs(got.corr - expected_corr) <= corr_tol + 1e-9), name


def test_statistic_tolerances_are_tight_where_channels_vary() -> None:
    """The derived bounds must not be vacuous: on well-spread channels they are far below any real error."""
    flat = np.random.default_rng(0).standard_normal((4, 1280))
    delta, frac_tol, corr_tol = _statistic_tolerances(flat)
    assert delta < 1e-4
    assert np.all(frac_tol < 1e-2)
    assert np.all(corr_tol < 1e-3)


def test_unmapped_tensors_fall_back_to_onnxruntime(exported: tuple) -> None:
    module, model = exported
    shared_outputs = [
        n.output[0] for n in model.graph.node if n.op_type == "Conv" and "shared.weight" in n.input
    ]
    calib = np.random.default_rng(6).standard_normal((9, 3, 8, 8)).astype(np.float32)
    stats = collect_torch_stats(module, {"input": calib}, model, tensors=shared_outputs)
    assert sorted(stats) == sorted(shared_outputs)
    values = _ort_stats(model, calib, shared_outputs)[shared_outputs[-1]]
    np.testing.assert_allclose(stats[shared_outputs[-1]].max, values.max(axis=(0, 2, 3)), atol=1e-5)


def test_accumulator_is_batch_invariant() -> None:
    data = np.random.default_rng(7).standard_normal((10, 4, 3, 3))
    whole, parts = ChannelStatsAccumulator(correlation=True), ChannelStatsAccumulator(correlation=True)
    whole.add(data)
    for chunk in np.array_split(data, 3):
        parts.add(chunk)
    a, b = whole.result(), parts.result()
    for field in ("mean", "mean_abs", "std", "max", "min", "frac_positive", "corr"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), atol=1e-12)


def test_calibration_errors(exported: tuple, tmp_path: Path) -> None:
    module, model = exported
    with pytest.raises(CalibrationError, match="no array for model input 'input'"):
        collect_torch_stats(module, {"images": np.ones((2, 3, 8, 8), np.float32)}, model)
    with pytest.raises(CalibrationError, match="empty"):
        collect_torch_stats(module, np.zeros((0, 3, 8, 8), np.float32), model)
    with pytest.raises(CalibrationError, match="'nope' is not produced"):
        collect_torch_stats(module, np.ones((2, 3, 8, 8), np.float32), model, tensors=["nope"])
