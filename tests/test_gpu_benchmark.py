"""benchmarks/gpu.py runs end to end on CPU at small shapes, and its measuring half needs only torch,
numpy and onnx (what a lent GPU machine has): plans prepared here are measured in a process where
scipy, click, rich, yaml, pydantic and polygraphy cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--size", "32", "--width", "0.125", "--targets", "0.5"]
MEASURE = ["--device", "cpu", "--batches", "1,2", "--warmup", "1", "--iters", "2", "--rounds", "1"]

# Runs benchmarks/gpu.py with the packages a GPU image lacks made unimportable.
BLOCKED_RUN = """
import importlib.abc, runpy, sys
BLOCKED = {"scipy", "click", "rich", "yaml", "pydantic", "polygraphy", "tensorrt", "sklearn", "onnxruntime"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed on the GPU image")
sys.meta_path.insert(0, Block())
sys.argv = ["benchmarks/gpu.py", *sys.argv[1:]]
runpy.run_path("benchmarks/gpu.py", run_name="__main__")
"""


@pytest.mark.slow
def test_prepared_plans_are_measured_with_torch_numpy_and_onnx_only(tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", *SMALL, "--prepare-only", str(prepared)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (prepared / "prepared.json").stat().st_size < 2_000_000  # kept indices, not weights

    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, "--from", str(prepared), *MEASURE, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| model | variant | batch |" in done.stdout
    rows = json.loads(out.read_text())["results"]
    assert {(r["model"], r["batch"]) for r in rows} == {
        (m, b) for m in ("resnet50", "mobilenetv2") for b in (1, 2)
    }
    compact = [r for r in rows if r["variant"] != "original"]
    assert len(compact) == 4 and all(r["variant"] == "l1 50% FLOPs, round-to 8" for r in compact)
    for r in compact:
        assert 0.45 <= r["flops_kept"] <= 0.55  # the budget was met (round-to 8 moves it a little)
        assert r["p50_ms"] > 0 and r["speedup"] > 0
        assert r["realised"] == r["speedup"] * r["flops_kept"]
        assert r["trt_check_only"]["ok"] and r["trt_check_only"]["exit_code"] == 0
        # compact module vs masked original in float32 on the same batch: the same function, so the
        # difference is float32 summation-order noise, far below the outputs' own scale
        assert r["max_abs_err_vs_masked"] <= 1e-4 * max(r["output_scale"], 1e-30)
