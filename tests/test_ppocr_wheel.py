"""PaddleOCR's own exports (issue 22), from the rapidocr_onnxruntime 1.4.4 wheel downloaded here:
PP-OCRv4's text detector (opset 12, dynamic batch, height and width), its recogniser (opset 12, a
LayerNorm ONNX Runtime fuses past that opset) and the v2.0 direction classifier (opset 11). Each runs
with at most --input-shape. Skipped, saying why, when the wheel cannot be downloaded."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.exporting import run

pytestmark = pytest.mark.slow

WHEEL = "rapidocr_onnxruntime==1.4.4"
MODELS = {
    "det": "ch_PP-OCRv4_det_infer.onnx",
    "rec": "ch_PP-OCRv4_rec_infer.onnx",
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
}


@pytest.fixture(scope="module")
def ppocr() -> dict[str, Path]:
    """The three models, extracted from the wheel cached in the system's temp folder (one download
    per machine, not per run; a file lock for parallel workers)."""
    from filelock import FileLock

    cache = Path(tempfile.gettempdir()) / "deploysparse-test-wheels"
    cache.mkdir(exist_ok=True)
    models = cache / "rapidocr_onnxruntime-1.4.4"
    with FileLock(str(cache / "rapidocr.lock")):
        if not all((models / name).is_file() for name in MODELS.values()):
            wheel = next(cache.glob("rapidocr_onnxruntime-1.4.4-*.whl"), None)
            if wheel is None:
                done = subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(cache), WHEEL],
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                wheel = next(cache.glob("rapidocr_onnxruntime-1.4.4-*.whl"), None)
                if wheel is None:
                    why = (done.stderr.strip().splitlines() or ["no output"])[-1]
                    pytest.skip(f"pip download {WHEEL} failed ({why}): the PP-OCR tests need the wheel")
            models.mkdir(exist_ok=True)
            with zipfile.ZipFile(wheel) as archive:
                for name in MODELS.values():
                    (models / name).write_bytes(archive.read(f"rapidocr_onnxruntime/models/{name}"))
    return {key: models / name for key, name in MODELS.items()}


def _data(path: Path, shape: tuple[int, ...]) -> Path:
    np.save(path, np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    return path


def test_the_detector_benches_and_runs_at_the_shape_given_or_the_datas(ppocr, tmp_path: Path, cli) -> None:
    bench = cli("bench", ppocr["det"], "--input-shape", "x:1x3x64x96", "--iters", "2", "--json")
    assert bench.code == 0, bench.err
    assert json.loads(bench.out)["input_shapes"] == {
        "shapes": {"x": [1, 3, 64, 96]},
        "source": "--input-shape",
    }
    recipe = tmp_path / "short.yaml"
    recipe.write_text("# short\nbench: {batches: [1, 2], warmup: 1, iters: 3, repeats: 1}\n")
    calib = _data(tmp_path / "calib.npy", (2, 3, 64, 64))
    ran = cli("run", recipe, "--model", ppocr["det"], "--calib", calib, "-o", tmp_path / "det")
    assert ran.code == 0, ran.err
    report = json.loads((tmp_path / "det" / "report.json").read_text())
    assert report["model"]["inputs"] == {"x": [1, 3, 64, 64]} and report["model"]["shape_source"] == "data"
    dead = report["pruning"]["dead"]
    assert dead["found"] > 0 and dead["removed"] + dead["kept"] == dead["found"]
    assert "not exact" not in " ".join(report["warnings"]) or dead["near_zero_removed"] > 0
    assert report["validation"]["passed"]


def test_the_recogniser_builds_fp32_with_a_graph_the_checker_accepts(ppocr, tmp_path: Path, cli) -> None:
    built = cli("build", ppocr["rec"], "-o", tmp_path / "rec", "--json")
    assert built.code == 0, built.err
    optimisation = json.loads(built.out)["metadata"]["graph_optimization"]
    assert optimisation["level"] == "basic" and "LayerNormalization" in optimisation["reason"]
    x = np.random.default_rng(1).standard_normal((2, 3, 48, 160)).astype(np.float32)
    want, got = run(ppocr["rec"], {"x": x})[0], run(tmp_path / "rec" / "model.optimized.onnx", {"x": x})[0]
    assert np.abs(want - got).max() <= 1e-4 * np.abs(want).max()


def test_the_classifier_runs_the_packaged_recipe(ppocr, tmp_path: Path, cli) -> None:
    calib = _data(tmp_path / "calib.npy", (4, 3, 48, 192))
    ran = cli("run", "x86-cpu-onnxruntime", "--model", ppocr["cls"], "--calib", calib, "-o", tmp_path / "cls")
    assert ran.code == 0, ran.err
    report = json.loads((tmp_path / "cls" / "report.json").read_text())
    assert report["model"]["inputs"] == {"x": [1, 3, 48, 192]}
    measured = [p["batch"] for p in report["latency"]["compact"]]
    skipped = [s["batch"] for s in report["latency"]["skipped_batches"]]
    assert 1 in measured and sorted(measured + skipped) == [
        1,
        8,
    ]  # batch 8 if it fits the time box, else named


def test_the_recogniser_loses_every_dead_filter_with_round_to_1(ppocr, tmp_path: Path, cli) -> None:
    pruned = cli(
        "prune",
        ppocr["rec"],
        "--input-shape",
        "1x3x48x320",
        "--round-to",
        "1",
        "-o",
        tmp_path / "c.onnx",
        "--json",
    )
    assert pruned.code == 0, pruned.err
    summary = json.loads(pruned.out)
    assert summary["dead"]["found"] == summary["dead"]["removed"] > 80  # 89 with ONNX Runtime 1.32
    assert not any("differs between samples" in w for w in summary["warnings"])
    assert summary["output_change"]["max_rel"] < 1e-4
    x = np.random.default_rng(2).standard_normal((2, 3, 48, 200)).astype(np.float32)
    want, got = run(ppocr["rec"], {"x": x})[0], run(tmp_path / "c.onnx", {"x": x})[0]
    assert np.abs(want - got).max() <= 1e-4 * np.abs(want).max()
