"""`deploysparse validate` and `polygraphy run --onnxrt` report the same error between two models.

Users check a compact model with either tool; if the two disagreed on the largest absolute error for
the same models and inputs, one of them would be wrong. Here polygraphy runs as its own CLI (its own
ONNX Runtime runner, its own input and output files) and its comparator reads the saved results,
so nothing is shared with deploysparse except the two ONNX files and the input values.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.slow  # runs the polygraphy CLI as subprocesses
polygraphy = pytest.importorskip("polygraphy")

from polygraphy.comparator import Comparator, CompareFunc, RunResults  # noqa: E402
from polygraphy.json import save_json  # noqa: E402

from deploysparse import api  # noqa: E402
from deploysparse.modelio import save_model  # noqa: E402
from deploysparse.validate import validate  # noqa: E402


def polygraphy_cli() -> list[str]:
    """The polygraphy entry point next to this interpreter (the venv's), else the one on PATH."""
    local = Path(sys.executable).with_name("polygraphy")
    found = str(local) if local.exists() else shutil.which("polygraphy")
    if found is None:
        pytest.skip("polygraphy CLI not installed")
    return [found]


def small_convnet() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1),
        nn.BatchNorm2d(24),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(24 * 4 * 4, 10),
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """An exported conv net, its L1-pruned compact version (30 % of channels), and fresh inputs."""
    folder = tmp_path_factory.mktemp("agreement")
    original = folder / "original.onnx"
    torch.onnx.export(
        small_convnet(),
        (torch.randn(2, 3, 8, 8),),
        str(original),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    rng = np.random.default_rng(7)
    calib = {"input": rng.standard_normal((16, 3, 8, 8)).astype(np.float32)}
    result = api.prune(original, criterion="l1", ratio=0.3, calib=calib)
    assert result.summary["channels_removed"] > 0
    compact = Path(save_model(result.model, folder / "compact.onnx"))
    data = rng.standard_normal((20, 3, 8, 8)).astype(np.float32)
    return original, compact, data


def polygraphy_max_abs(original: Path, compact: Path, data: np.ndarray, folder: Path) -> float:
    """`polygraphy run --onnxrt` on each model with the same saved inputs, then its comparator."""
    inputs = folder / "inputs.json"
    save_json([{"input": data}], str(inputs))
    saved = []
    for model in (original, compact):
        out = folder / f"{model.stem}_outputs.json"
        subprocess.run(
            [
                *polygraphy_cli(),
                "run",
                str(model),
                "--onnxrt",
                "--load-inputs",
                str(inputs),
                "--save-outputs",
                str(out),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        saved.append(RunResults.load(str(out)))
    runs = RunResults()
    for name, results in zip(("original", "compact"), saved, strict=True):
        ((_, iterations),) = results
        runs.append((name, iterations))
    accuracy = Comparator.compare_accuracy(runs, compare_func=CompareFunc.simple(check_error_stat="max"))
    (per_iteration,) = accuracy[0].values()
    return max(float(result.max_absdiff) for iteration in per_iteration for result in iteration.values())


@pytest.fixture(scope="module")
def polygraphy_error(models, tmp_path_factory) -> float:
    original, compact, data = models
    return polygraphy_max_abs(original, compact, data, tmp_path_factory.mktemp("polygraphy"))


def test_validate_and_polygraphy_agree_on_max_abs_error(models, polygraphy_error):
    original, compact, data = models
    expected = polygraphy_error
    report = validate(
        original, compact, {"input": data}, batch_size=len(data), atol=None, rtol=None, min_cosine=None
    )
    assert report.samples == len(data)
    assert expected > 1e-3, "the pruned model must differ from the original for the check to mean anything"
    assert report.max_abs_err == pytest.approx(expected, rel=1e-6)


# The largest accumulation in small_convnet is the Linear layer's 384-term dot product. Kernels chosen
# per batch size may sum in another order, moving each output by at most ~384 float32 roundings of
# the output's scale; a max of differences of two such outputs moves by at most twice that.
_LONGEST_SUM = 24 * 4 * 4


def test_agreement_survives_validate_batching(models, polygraphy_error):
    """validate runs in batches (here 6, leaving a short last batch); polygraphy runs all 20 at once."""
    original, compact, data = models
    report = validate(original, compact, {"input": data}, batch_size=6, atol=None, rtol=None, min_cosine=None)
    session = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    scale = max(1.0, float(np.abs(session.run(None, {"input": data})[0]).max()))
    batch_layout_bound = 2 * _LONGEST_SUM * float(np.finfo(np.float32).eps) * scale
    assert report.max_abs_err == pytest.approx(polygraphy_error, abs=batch_layout_bound)
