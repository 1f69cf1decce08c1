"""`deploysparse sweep` in-process on the bundled digits model: outputs, selection, best.json as a
`check` baseline, content-hash keys that make re-runs skip finished points, and crash safety.

Every figure a row claims is recomputed here from the point's own files: the compact ONNX on ONNX
Runtime on the validation split gives the row's accuracy, and its cost is re-counted.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from deploysparse import api
from deploysparse.check import compare_reports
from deploysparse.report import load_report
from deploysparse.sweep import load_sweep, run_sweep
from deploysparse.sweep import runner as sweep_runner
from deploysparse.sweep.select import choose
from deploysparse.zoo.digits import validation_set

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # every test here runs real sweep points (seconds each)

SWEEP = """\
name: test-digits
models:
  - model: deploysparse.zoo.digits:digits_model
    input_shape: [1, 1, 16, 16]
    name: digits
data:
  calib: deploysparse.zoo.digits:calibration_set
  val: deploysparse.zoo.digits:validation_set
recipe:
  prune: {max_layer_ratio: 0.95}
  validate: {atol: null, rtol: null, min_cosine: null, min_top1_agreement: 0.9, max_accuracy_drop: 0.05}
  bench: {warmup: 1, iters: 5, repeats: 1}
axes:
  criterion: [l1]
  flops_target: [0.5, 0.1]
select:
  goal: min_flops
  max_accuracy_drop: 0.5
"""


def write_sweep(folder: Path, text: str = SWEEP) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sweep.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sweep file, output folder) of one finished two-point sweep, shared by the tests below."""
    folder = tmp_path_factory.mktemp("sweep")
    path = write_sweep(folder)
    run_sweep(load_sweep(path), folder / "out")
    return path, folder / "out"


def rows_of(outdir: Path) -> list[dict]:
    return [json.loads(line) for line in (outdir / "results.jsonl").read_text().splitlines()]


def accuracy_of(onnx_path: Path) -> float:
    images, labels = validation_set()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    return float((logits.argmax(axis=1) == labels).mean())


def test_sweep_writes_every_output(finished) -> None:
    _, out = finished
    for name in ("results.jsonl", "results.csv", "best.json", "sweep.html", "sweep.json"):
        assert (out / name).is_file(), name
    rows = rows_of(out)
    assert [(r["criterion"], r["flops_target"], r["status"]) for r in rows] == [
        ("l1", 0.5, "ok"),
        ("l1", 0.1, "ok"),
    ]
    for row in rows:
        point = out / "points" / row["key"]
        assert {"report.json", "report.html", "compact.onnx", "plan.json", "result.json"} <= {
            p.name for p in point.iterdir()
        }
        assert row["report"] == f"points/{row['key']}/report.json"
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["key"] for r in table] == [r["key"] for r in rows]
    assert float(table[1]["flops_ratio"]) == pytest.approx(rows[1]["flops_ratio"])
    assert not list((out / "points").glob(".staging-*"))


def test_row_figures_are_the_points_own(finished) -> None:
    """Accuracy recomputed from compact.onnx; FLOPs re-counted by analyzing compact.onnx."""
    _, out = finished
    for row in rows_of(out):
        compact = out / "points" / row["key"] / "compact.onnx"
        assert accuracy_of(compact) == pytest.approx(row["accuracy"], abs=1e-12)
        assert api.analyze(compact).flops == row["flops"]
        assert row["accuracy_original"] == pytest.approx(
            accuracy_of(out / "inputs" / f"{row['model_sha256']}.onnx")
        )
    low = rows_of(out)[1]
    assert low["flops_ratio"] < 0.12  # 10% target, within the budget's 2-point tolerance


def test_best_is_what_the_rule_chooses_and_a_valid_check_baseline(finished) -> None:
    path, out = finished
    rows = rows_of(out)
    sweep = load_sweep(path)
    expected = min(
        (r for r in rows if r["passed"] and r["accuracy_drop"] <= 0.5), key=lambda r: r["flops_ratio"]
    )
    assert choose(rows, sweep.select)["key"] == expected["key"]
    best = load_report(out / "best.json")  # the report schema `check` reads
    assert best.extra["sweep"]["key"] == expected["key"]
    assert best.cost.flops_after == expected["flops"]
    point_report = load_report(out / "points" / expected["key"] / "report.json")
    # the point's own report: nothing regressed (one run a point: latency cannot be decided)
    assert not compare_reports(point_report, best).failures


def test_check_cli_accepts_best_json_as_a_baseline(finished, cli) -> None:
    _, out = finished
    point = rows_of(out)[0]
    result = cli("check", out / "points" / point["key"] / "report.json", "--baseline", out / "best.json")
    # the 50% point against the 10% baseline: more FLOPs than the baseline, so check fails on cost
    assert result.code == 1
    assert "FLOPs after pruning" in result.out


def test_keys_are_content_hashes_so_a_rerun_skips_finished_points(
    finished, tmp_path: Path, monkeypatch
) -> None:
    path, out = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished point ran again")

    monkeypatch.setattr(sweep_runner, "run_point", must_not_run)
    outcome = run_sweep(load_sweep(path), copy, resume=True)
    assert (outcome.ran, outcome.skipped) == (0, 2)
    assert [r["key"] for r in outcome.rows] == [r["key"] for r in rows_of(out)]


def test_changed_data_changes_the_key(finished, tmp_path: Path) -> None:
    """The same settings on other validation bytes are another point (the key hashes the data)."""
    path, out = finished
    images, labels = validation_set()
    np.save(tmp_path / "val.npy", images[:90])
    np.save(tmp_path / "labels.npy", labels[:90])
    text = SWEEP.replace(
        "  val: deploysparse.zoo.digits:validation_set",
        f"  val: {tmp_path / 'val.npy'}\n  labels: {tmp_path / 'labels.npy'}",
    )
    from deploysparse.sweep.inputs import prepare_inputs
    from deploysparse.sweep.runner import make_job

    sweep = load_sweep(write_sweep(tmp_path / "other", text))
    inputs = prepare_inputs(sweep, out / "inputs")
    settings = {
        "criterion": "l1",
        "flops_target": 0.5,
        "precision": "fp32",
        "backend": "onnxruntime",
        "batch": 1,
    }
    key = make_job(sweep, inputs, inputs.models[0], settings).key
    assert key != rows_of(out)[0]["key"]
    original = load_sweep(path)
    original_inputs = prepare_inputs(original, out / "inputs")
    assert (
        make_job(original, original_inputs, original_inputs.models[0], settings).key == rows_of(out)[0]["key"]
    )


def test_a_crashed_point_is_recorded_and_the_others_kept(tmp_path: Path, monkeypatch) -> None:
    path = write_sweep(tmp_path, SWEEP.replace("flops_target: [0.5, 0.1]", "flops_target: [0.5, 0.3]"))
    real = sweep_runner.run_point

    def crash_at_30(job, staging, *args, **kwargs):
        if job.settings["flops_target"] == 0.3:
            raise RuntimeError("simulated crash")
        return real(job, staging, *args, **kwargs)

    monkeypatch.setattr(sweep_runner, "run_point", crash_at_30)
    outcome = run_sweep(load_sweep(path), tmp_path / "out")
    status = {r["flops_target"]: r for r in outcome.rows}
    assert status[0.5]["status"] == "ok"
    assert status[0.3]["status"] == "failed"
    assert status[0.3]["error"] == "RuntimeError: simulated crash"
    assert "simulated crash" in status[0.3]["traceback"]
    assert outcome.best is not None and outcome.best["flops_target"] == 0.5

    monkeypatch.setattr(sweep_runner, "run_point", real)
    again = run_sweep(load_sweep(path), tmp_path / "out")
    assert (again.ran, again.skipped) == (1, 1)  # only the failed point runs again
    assert [r["status"] for r in again.rows] == ["ok", "ok"]
    assert again.best["flops_target"] == 0.3


def test_a_kill_mid_sweep_keeps_finished_points(tmp_path: Path, monkeypatch) -> None:
    path = write_sweep(tmp_path, SWEEP.replace("flops_target: [0.5, 0.1]", "flops_target: [0.6, 0.4]"))
    real = sweep_runner.run_point

    def killed_on_second(job, staging, *args, **kwargs):
        if job.settings["flops_target"] == 0.4:
            (staging / "half-written.onnx").write_bytes(b"\0" * 10)
            raise KeyboardInterrupt
        return real(job, staging, *args, **kwargs)

    monkeypatch.setattr(sweep_runner, "run_point", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(load_sweep(path), tmp_path / "out")
    points = tmp_path / "out" / "points"
    finished = [p for p in points.iterdir() if not p.name.startswith(".")]
    assert len(finished) == 1 and (finished[0] / "report.json").is_file()

    monkeypatch.setattr(sweep_runner, "run_point", real)
    outcome = run_sweep(load_sweep(path), tmp_path / "out", resume=True)
    assert (outcome.ran, outcome.skipped) == (1, 1)
    assert not list(points.glob(".staging-*")), "the half-written point must not survive"


def test_no_point_meeting_the_rule_writes_no_best_json(finished, tmp_path: Path, cli) -> None:
    path, out = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    strict = write_sweep(
        tmp_path / "strict",
        path.read_text().replace("goal: min_flops", "goal: min_flops\n  max_p50_ms: 0.000001"),
    )
    result = cli("sweep", strict, "-o", copy)
    assert result.code == 1
    assert "no point meets the selection rule" in result.out
    assert not (copy / "best.json").exists()


def test_finetune_recovers_through_apply_plan_and_reexport(tmp_path: Path) -> None:
    """A 10%-FLOPs point fine-tuned for one epoch: the exported module is what was validated."""
    text = SWEEP.replace("flops_target: [0.5, 0.1]", "flops_target: [0.1]") + (
        "finetune:\n  function: finetune_digits:finetune\n  args: {epochs: 1}\n"
    )
    folder = tmp_path / "ft"
    path = write_sweep(folder, text)
    shutil.copy(REPO / "examples" / "finetune_digits.py", folder / "finetune_digits.py")
    outcome = run_sweep(load_sweep(path), tmp_path / "out")
    (row,) = outcome.rows
    assert row["status"] == "ok", row.get("error")
    assert row["finetune"] == "finetune_digits:finetune"
    compact = tmp_path / "out" / "points" / row["key"] / "compact.onnx"
    assert accuracy_of(compact) == pytest.approx(row["accuracy"], abs=1e-12)
    report = load_report(tmp_path / "out" / "points" / row["key"] / "report.json")
    assert report.extra["sweep"]["finetune"] == {
        "function": "finetune_digits:finetune",
        "args": {"epochs": 1},
    }
    # the same channels as the pruned plan: the fine-tuned export has the pruned cost
    assert api.analyze(compact).flops == row["flops"]


def test_finetune_returning_no_module_fails_the_point_with_a_reason(tmp_path: Path) -> None:
    folder = tmp_path / "ft"
    path = write_sweep(
        folder,
        SWEEP.replace("flops_target: [0.5, 0.1]", "flops_target: [0.5]") + "finetune: broken_ft:train\n",
    )
    (folder / "broken_ft.py").write_text("def train(module):\n    return None\n")
    outcome = run_sweep(load_sweep(path), tmp_path / "out")
    (row,) = outcome.rows
    assert row["status"] == "failed"
    assert row["error"] == "finetune broken_ft:train returned NoneType, expected the trained nn.Module"
