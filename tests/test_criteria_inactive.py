"""inactive: channels zero on every calibration input are removed (exactly, on that data)."""

from __future__ import annotations

import numpy as np
import pytest

from deploysparse.budget import Budget
from deploysparse.criteria import plan_with
from deploysparse.errors import CalibrationError
from deploysparse.graph.surgery import rewrite_graph
from tests.criteria_helpers import Builder, check_budgets, context, residual_model, run, w


def never_firing_model(rng: np.random.Generator):
    """conv-relu with filters 1 and 4 forced negative on nonnegative inputs (bias -100), then conv."""
    b = Builder(rng)
    w1 = np.abs(w(rng, 6, 3, 3, 3))
    h = b.conv("x", w1)
    bias = next(i for i in b.inits if i.name == f"{h}.bias")
    from onnx import numpy_helper

    value = numpy_helper.to_array(bias).copy()
    value[[1, 4]] = -100.0
    bias.CopyFrom(numpy_helper.from_array(value, bias.name))
    h = b.op("Relu", h)
    return b.model(b.op("GlobalAveragePool", b.op("Relu", b.conv(h, w(rng, 5, 6, 3, 3)))))


def test_never_firing_channels_removed_exactly_on_the_data():
    rng = np.random.default_rng(0)
    model = never_firing_model(rng)
    x = rng.random((10, 3, 8, 8)).astype(np.float32)
    ga, ctx = context(model, x)
    plan = plan_with("inactive", ga, ctx, Budget(round_to=1))
    assert plan.kept("g1", 6).tolist() == [0, 2, 3, 5]
    assert any("exact on those inputs only" in n for n in plan.notes)
    fresh = np.random.default_rng(1).random((4, 3, 8, 8)).astype(np.float32)
    assert np.allclose(run(rewrite_graph(ga, plan).model, fresh), run(model, fresh), atol=1e-5)


def test_needs_calibration_data():
    ga, ctx = context(never_firing_model(np.random.default_rng(0)))
    with pytest.raises(CalibrationError, match="calib"):
        plan_with("inactive", ga, ctx, Budget(round_to=1))


def test_budgets_met():
    rng = np.random.default_rng(2)
    check_budgets("inactive", residual_model(rng), rng.normal(size=(8, 3, 8, 8)).astype(np.float32))
