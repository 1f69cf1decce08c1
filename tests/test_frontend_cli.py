"""`deploysparse prune` with a PyTorch entry point: exported, pruned, and clear one-line errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from deploysparse.cli import main

_MODELS = """
from torch import nn

def net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1),
                         nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

def broken():
    raise RuntimeError("needs num_classes")
"""


class _Opaque:
    """Pickled as a class instance: weights_only loading must refuse it."""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    name = f"dsp_cli_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(_MODELS))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, tmp_path
    sys.modules.pop(name, None)


def _prune(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        main(["prune", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_entry_point_with_dead_filter_is_pruned(project: tuple[str, Path], capsys) -> None:
    name, folder = project
    from deploysparse.frontend.torch_loader import load_entry_point

    module = load_entry_point(f"{name}:net")
    torch.manual_seed(0)
    state = {k: (torch.rand_like(v.float()) + 0.5).to(v.dtype) for k, v in module.state_dict().items()}
    state["1.weight"][2] = 0.0  # a dead filter: its channel is the constant relu(beta)
    torch.save(state, folder / "w.pt")
    out_path = folder / "compact.onnx"
    code, out, err = _prune(
        [
            f"{name}:net",
            "--weights",
            str(folder / "w.pt"),
            "--input-shape",
            "1,3,8,8",
            "-o",
            str(out_path),
            "--round-to",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    assert "removed 1 channels" in out
    assert "[torch.onnx]" not in out + err
    module.load_state_dict(state)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, module.eval()(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    shapes = {t.name: tuple(t.dims) for t in onnx.load(str(out_path)).graph.initializer}
    assert shapes["0.weight"][0] == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["{m}:broken", "--input-shape", "1,3,8,8"],
            "factory '{m}:broken' raised RuntimeError: needs num_classes",
        ),
        (["{m}:net"], "the input shape is unknown; pass --input-shape"),
        (["{m}:net", "--input-shape", "1,3,8,8", "--criterion", "magic"], "--criterion magic: unknown"),
        (["{m}.net"], "not an entry point 'package.module:factory'"),
        (["dsp_cli_absent_pkg:net", "--input-shape", "1,3,8,8"], "module 'dsp_cli_absent_pkg' not found"),
        (["{m}:net", "--weights", "{d}/code.pt", "--input-shape", "1,3,8,8"], "not a plain state dict"),
        (
            ["{m}:net", "--weights", "{d}/missing.pt", "--input-shape", "1,3,8,8"],
            "missing keys 4.bias, 4.num_batches",
        ),
    ],
)
def test_entry_point_errors_are_one_line_exit_2(project, capsys, args: list[str], message: str) -> None:
    name, folder = project
    torch.save({"x": _Opaque()}, folder / "code.pt")
    from deploysparse.frontend.torch_loader import load_entry_point

    state = load_entry_point(f"{name}:net").state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("4.")}, folder / "missing.pt")
    args = [a.format(m=name, d=folder) for a in args]
    code, _, err = _prune([*args, "-o", str(folder / "out.onnx")], capsys)
    assert code == 2
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert message.format(m=name) in err
    assert not (folder / "out.onnx").exists()
