"""benchmarks/gpu.py runs end to end on CPU at small shapes, and its measuring half needs only torch,
numpy and onnx (what a lent GPU machine has): plans prepared here are measured in a process where
scipy, click, rich, yaml, pydantic and polygraphy cannot be imported."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import onnx
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


# A stand-in for trtexec, to test the script's TensorRT plumbing on CPU: it records every call (its
# arguments and folder), "builds" by copying the ONNX to the engine path, and prints a summary line in
# trtexec's format. Its figures are the double's, not a measurement, and no assertion reads them as one.
FAKE_TRTEXEC = """#!{python}
import json, os, pathlib, shutil, sys
with open({log!r}, "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec")
if "--onnx" in args:
    shutil.copyfile(args["--onnx"], args["--saveEngine"])
else:
    assert pathlib.Path(args["--loadEngine"]).is_file()
    median = 1.0 if "sparse" in os.getcwd() else 2.0
    print(f"[I] GPU Compute Time: min = 0.9 ms, max = 3 ms, mean = {{median}} ms, median = {{median}} ms, "
          "percentile(90%) = 2 ms")
"""


def test_trtexec_lines_and_summary_parsing() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    log = "[I] Latency: min = 3 ms\n[I] GPU Compute Time: min = 0.5 ms, max = 0.9 ms, mean = 0.61 ms, median = 0.6 ms\n"
    assert gpu.gpu_median_ms(log) == 0.6
    with pytest.raises(RuntimeError, match="no 'GPU Compute Time"):
        gpu.gpu_median_ms("[I] nothing here")
    assert gpu.trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v101500] # trtexec") == "10.15.0"
    emitted = (
        "trtexec --onnx=model.fp16.onnx --saveEngine=model.engine --stronglyTyped --minShapes='x:0':1x3x8x8"
    )
    assert gpu.engine_build_command(emitted, "/opt/trt/bin/trtexec") == [
        "/opt/trt/bin/trtexec",
        "--onnx=model.fp16.onnx",
        "--saveEngine=model.engine",
        "--stronglyTyped",
        "--minShapes=x:0:1x3x8x8",
    ]
    timing = gpu.timing_command("trtexec", "model.engine", "x", [8, 3, 8, 8], 500, 200)
    assert "--shapes=x:8x3x8x8" in timing and "--loadEngine=model.engine" in timing


@pytest.mark.slow
def test_dense_and_2_4_engines_are_built_by_the_emitted_lines_and_timed_per_batch(tmp_path: Path) -> None:
    from deploysparse.backends.trt_sparsity import is_2_4, weight_axis

    prepared = tmp_path / "prepared"
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu.py",
            *SMALL,
            "--models",
            "resnet50",
            "--batches",
            "1,2",
            "--trt-sparsity",
            "--prepare-only",
            str(prepared),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trt = json.loads((prepared / "prepared.json").read_text())[0]["compacts"][0]["trt"]
    assert trt["sparse_layers"] > 0 and 0 < trt["change"]["cosine"] <= 1
    for mode in ("dense", "sparse"):
        folder = prepared / trt[mode]["folder"]
        assert (folder / "model.fp16.onnx").is_file() and (folder / "build-engine.sh").is_file()
        assert ("--sparsity=enable" in trt[mode]["trtexec"]) is (mode == "sparse")
    sparse = onnx.load(str(prepared / trt["sparse"]["folder"] / "model.fp16.onnx"))
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in sparse.graph.initializer}
    assert (
        sum(
            is_2_4(stored[w], axis)
            for n in sparse.graph.node
            if (found := weight_axis(n, sparse))
            for w, axis in [found]
        )
        == trt["sparse_layers"]
    )

    calls = tmp_path / "calls.jsonl"
    fake = tmp_path / "trtexec"
    fake.write_text(FAKE_TRTEXEC.format(python=sys.executable, log=str(calls)))
    fake.chmod(0o755)
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCKED_RUN,
            "--from",
            str(prepared),
            *MEASURE,
            "--trt-sparsity",
            "--trtexec",
            str(fake),
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dense vs 2:4 sparse" in done.stdout and "| 2:4 speed-up |" in done.stdout
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    builds = [c for c in recorded if any(a.startswith("--onnx=") for a in c["argv"])]
    assert [shlex.join(["trtexec", *c["argv"]]) for c in builds] == [
        trt["dense"]["trtexec"],
        trt["sparse"]["trtexec"],
    ]
    assert [Path(c["cwd"]) for c in builds] == [
        prepared / trt["dense"]["folder"],
        prepared / trt["sparse"]["folder"],
    ]
    timed = [c for c in recorded if c not in builds]
    assert len(timed) == 4  # dense and sparse engines at batches 1 and 2
    rows = json.loads(out.read_text())["tensorrt_sparsity"]
    assert [(r["batch"], r["sparse_layers"], r["tensorrt"]) for r in rows] == [
        (1, trt["sparse_layers"], "10.3.0"),
        (2, trt["sparse_layers"], "10.3.0"),
    ]
    assert all(r["sparse_speedup"] == r["dense_ms"] / r["sparse_ms"] for r in rows)
