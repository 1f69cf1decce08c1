"""Probes: gates that must be right (validate on exact, large-scale, fp16 and int8 models; the run
report), files created the way a CLI creates them, and what the user sees when something goes wrong
inside deploysparse.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from tests.archs.onnxgraphs import dead_convnet
from tests.probing import Workspace, assert_ok, assert_untouched, make_workspace, snapshot


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


def _scaled(factor: float) -> onnx.ModelProto:
    """dead_convnet with the classifier's weights and bias multiplied by `factor` (logits ~ factor)."""
    model = dead_convnet()
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    for init in model.graph.initializer:
        if init.name in gemm.input[1:]:
            init.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name)
            )
    return model


def _json(result) -> dict:
    return json.loads(result.out)


def test_identical_model_passes_with_cosine_at_most_one(cli, ws: Workspace) -> None:
    result = cli("validate", ws.model, ws.model, "--data", ws.calib, "--json")
    assert_ok(result)
    report = _json(result)
    assert report["passed"] and report["max_abs_err"] == 0.0
    assert report["cosine"] <= 1.0 and all(o["cosine"] <= 1.0 for o in report["outputs"])


def test_run_of_an_exact_dead_prune_passes_and_publishes(cli, ws: Workspace) -> None:
    out = ws.root / "out"
    result = cli("run", ws.recipe, "--model", ws.model, "--calib", ws.calib, "-o", out, "--json")
    assert_ok(result)
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["passed"] and report["validation"]["cosine"] <= 1.0
    assert report["pruning"]["channels_removed"] == 4


def test_exact_compact_of_large_logits_passes_at_fp32_defaults(cli, ws: Workspace) -> None:
    """Logits ~1e4: an exact compact differs by float32 rounding of the order 1e-3 absolute, which a
    fixed atol of 1e-4 would fail; atol + rtol x |original| passes it."""
    big = ws.root / "big.onnx"
    onnx.save(_scaled(3e4), str(big))
    compact = ws.root / "big-compact.onnx"
    assert_ok(cli("prune", big, "-o", compact))
    result = cli("validate", big, compact, "--data", ws.calib, "--json")
    assert_ok(result)
    report = _json(result)
    assert report["outputs"][0]["reference_scale"] > 1e3
    assert report["max_rel_err"] < 1e-5


def test_a_perturbed_model_fails_saying_which_criterion_and_by_how_much(cli, ws: Workspace) -> None:
    model = dead_convnet()
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    init = next(i for i in model.graph.initializer if i.name == gemm.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.01), init.name))
    wrong = ws.root / "wrong.onnx"
    onnx.save(model, str(wrong))
    result = cli("validate", ws.model, wrong, "--data", ws.calib, "--atol", "1e-6", "--rtol", "1e-4")
    assert result.code == 1, result.err
    fail = [line for line in result.out.splitlines() if "FAIL output" in line]
    assert fail and "atol 1e-06 + rtol 0.0001 x |original|" in fail[0] and "x its bound" in fail[0], (
        result.out
    )
    assert "max rel err" not in result.out  # no element-wise ratio that divides by outputs near zero


def test_int8_defaults_follow_the_precision_and_figures_mean_something(cli, ws: Workspace) -> None:
    out = ws.root / "b8"
    assert_ok(cli("build", ws.model, "--precision", "int8", "--calib", ws.calib, "-o", out))
    int8 = out / "model.int8.onnx"
    result = cli("validate", ws.model, int8, "--data", ws.calib, "--json")
    assert_ok(result)
    report = _json(result)
    assert report["precision"] == "int8" and report["tolerances"]["atol"] is None
    assert 0 <= report["max_rel_err"] < 1.0
    forced = cli("validate", ws.model, int8, "--data", ws.calib, "--precision", "fp32", "--json")
    assert forced.code in (0, 1)  # fp32 bounds may or may not hold; either way the figures are finite
    assert np.isfinite(_json(forced)["max_rel_err"])


def test_fp16_build_passes_at_fp16_defaults(cli, ws: Workspace) -> None:
    out = ws.root / "b16"
    assert_ok(cli("build", ws.model, "--precision", "fp16", "-o", out))
    result = cli("validate", ws.model, out / "model.fp16.onnx", "--data", ws.calib, "--json")
    assert_ok(result)
    assert _json(result)["precision"] == "fp16"


def test_nan_outputs_fail_with_a_count(cli, ws: Workspace) -> None:
    model = dead_convnet()
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    init = next(i for i in model.graph.initializer if i.name == gemm.input[2])
    values = numpy_helper.to_array(init).copy()
    values[1] = np.nan
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    broken = ws.root / "nan.onnx"
    onnx.save(model, str(broken))
    result = cli("validate", ws.model, broken, "--data", ws.calib)
    assert result.code == 1
    assert "8 of 32 values are NaN or Inf in the compact model" in result.out, result.out


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_outputs_honour_the_umask(cli, ws: Workspace, mask: int) -> None:
    old = os.umask(mask)
    try:
        compact, plan, junit = ws.root / "c.onnx", ws.root / "p.json", ws.root / "j.xml"
        assert_ok(cli("prune", ws.ext_model, "-o", compact, "--plan-out", plan))
        cli("check", ws.report, "--baseline", ws.baseline, "--junit", junit)
        for path in (compact, plan, junit):
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    finally:
        os.umask(old)


def test_run_folder_honours_the_umask(cli, ws: Workspace) -> None:
    old = os.umask(0o022)
    try:
        out = ws.root / "out"
        assert_ok(cli("run", ws.recipe, "--model", ws.model, "--calib", ws.calib, "-o", out, "--json"))
        assert stat.S_IMODE(out.stat().st_mode) == 0o755
        assert stat.S_IMODE((out / "compact.onnx").stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_run_report_describes_the_published_files_and_a_copied_folder_loads(
    cli, ws: Workspace, tmp_path: Path
) -> None:
    out = ws.root / "out"
    assert_ok(cli("run", ws.recipe, "--model", ws.ext_model, "--calib", ws.calib, "-o", out, "--json"))
    copy = tmp_path / "elsewhere" / "copied"
    shutil.copytree(out, copy)
    shutil.rmtree(out)
    report = json.loads((copy / "report.json").read_text())
    for name, digest in report["artifacts"].items():
        assert hashlib.sha256((copy / name).read_bytes()).hexdigest() == digest, name
    assert not any(
        str(ws.root) in (copy / n).read_text(errors="ignore")
        for n in report["artifacts"]
        if n.endswith(".json")
    )
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(str(ws.model)).run(None, {"input": x})[0]
    for name in ("compact.onnx", report["validation"]["compact"]):
        got = ort.InferenceSession(str(copy / name)).run(None, {"input": x})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_a_bug_of_ours_is_one_line_and_exit_1(cli, ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from deploysparse import api

    def broken(*args, **kwargs):
        raise KeyError("groups")

    monkeypatch.setattr(api, "prune", broken)
    before = snapshot(ws.root)
    result = cli("prune", ws.model, "-o", ws.root / "out.onnx")
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "deploysparse prune" in lines[0] and "--debug" in lines[0], result.err
    assert "Traceback" not in result.err
    assert_untouched(before, ws.root)
    with pytest.raises(KeyError):
        cli("prune", ws.model, "-o", ws.root / "out.onnx", "--debug")


@pytest.mark.slow
def test_onnx_runtime_log_lines_stay_out_of_the_output(ws: Workspace) -> None:
    """ONNX Runtime writes its warnings (coloured) from C++ straight to stderr: a real process shows them."""
    model = dead_convnet()
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "unused"))
    noisy = ws.root / "noisy.onnx"
    onnx.save(model, str(noisy))
    exe = [sys.executable, "-m", "deploysparse"]
    commands = [
        [
            "prune",
            noisy,
            "-o",
            ws.root / "c.onnx",
            "--calib",
            ws.calib,
            "--criterion",
            "l1",
            "--ratio",
            "0.3",
        ],
        ["build", noisy, "--precision", "int8", "--calib", ws.calib, "-o", ws.root / "b", "-q"],
        [
            "validate",
            noisy,
            ws.root / "c.onnx",
            "--data",
            ws.calib,
            "-q",
            "--min-cosine",
            "off",
            "--atol",
            "off",
            "--rtol",
            "off",
        ],
        ["bench", noisy, "--iters", "2", "--warmup", "0", "-q"],
    ]
    for args in commands:
        proc = subprocess.run([*exe, *map(str, args)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "\x1b[" not in proc.stderr + proc.stdout and "onnxruntime:" not in proc.stderr, proc.stderr
