"""The CI gate: pass, each kind of regression, bad input, and the JUnit/Markdown/baseline outputs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from deploysparse.check import Tolerances, compare_reports, resolve_tolerances
from deploysparse.cli import main
from deploysparse.report.schema import ReportError, parse_report
from tests.report_factory import make_report


def dump(path: Path, report: dict[str, Any]) -> Path:
    path.write_text(json.dumps(report), encoding="utf-8")
    return path


def run_check(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(["check", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def slow_down(report: dict[str, Any], batch: int, factor: float) -> dict[str, Any]:
    for point in report["latency"]["compact"]:
        if point["batch"] == batch:
            for run in point["runs"]:
                run["p50_ms"] *= factor
                run["p99_ms"] *= factor
            for key in ("p50_ms", "p90_ms", "p99_ms"):
                point[key] *= factor
    return report


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return dump(tmp_path / "report.json", make_report()), dump(tmp_path / "baseline.json", make_report())


def test_identical_reports_pass(files: tuple[Path, Path], capsys) -> None:
    report, baseline = files
    code, out, _ = run_check([str(report), "--baseline", str(baseline)], capsys)
    assert code == 0
    assert "PASS: 9 checks" in out
    assert "median of 5 runs, p50 spread 1.390-1.510 ms" in out


def test_latency_within_tolerance_passes_and_beyond_fails(tmp_path: Path, files, capsys) -> None:
    _, baseline = files
    within = dump(tmp_path / "within.json", slow_down(make_report(), 8, 1.08))
    assert run_check([str(within), "--baseline", str(baseline)], capsys)[0] == 0
    beyond = dump(tmp_path / "beyond.json", slow_down(make_report(), 8, 1.15))
    code, out, _ = run_check([str(beyond), "--baseline", str(baseline)], capsys)
    assert code == 1
    assert "FAIL: 2 of 9 checks regressed" in out  # p50 and p99 at batch 8; batch 1 untouched
    assert "+15.0%" in out
    code, _, _ = run_check([str(beyond), "--baseline", str(baseline), "--latency-tolerance", "0.2"], capsys)
    assert code == 0


def test_one_noisy_run_does_not_fail_the_gate(tmp_path: Path, files, capsys) -> None:
    """The median over runs ignores a single run slowed down by a noisy neighbour."""
    _, baseline = files
    report = make_report()
    report["latency"]["compact"][0]["runs"][2] = {"p50_ms": 9.0, "p99_ms": 14.0}
    code, out, _ = run_check([str(dump(tmp_path / "r.json", report)), "--baseline", str(baseline)], capsys)
    assert code == 0
    assert "p50 spread 1.390-9.000 ms" in out


def test_accuracy_regression_fails(tmp_path: Path, files, capsys) -> None:
    _, baseline = files
    report = make_report()
    report["validation"]["accuracy_compact"] = 0.9466 - 0.008
    code, out, _ = run_check([str(dump(tmp_path / "r.json", report)), "--baseline", str(baseline)], capsys)
    assert code == 1
    assert "-0.80 pt" in out
    report["validation"]["accuracy_compact"] = 0.9466 - 0.004
    assert run_check([str(dump(tmp_path / "r.json", report)), "--baseline", str(baseline)], capsys)[0] == 0


def test_top1_agreement_regression_and_missing_metric_fail(files) -> None:
    report, baseline = make_report(), make_report()
    report["validation"]["top1_agreement"] = 0.98
    result = compare_reports(report, baseline)
    assert [item.name for item in result.failures] == ["top-1 agreement"]
    report["validation"]["top1_agreement"] = None
    result = compare_reports(report, baseline)
    assert [(item.name, item.detail) for item in result.failures] == [
        ("top-1 agreement", "the report does not measure it")
    ]


def test_params_or_flops_growth_fails(tmp_path: Path, files, capsys) -> None:
    _, baseline = files
    report = make_report()
    report["cost"]["params_after"] += 1
    code, out, _ = run_check([str(dump(tmp_path / "r.json", report)), "--baseline", str(baseline)], capsys)
    assert code == 1
    assert "params after pruning" in out
    report = make_report()
    report["cost"]["flops_after"] = int(report["cost"]["flops_after"] * 1.5)
    result = compare_reports(report, make_report())
    assert [item.name for item in result.failures] == ["FLOPs after pruning"]
    report = make_report()
    report["cost"]["params_after"] -= 1000  # smaller is fine
    assert compare_reports(report, make_report()).passed


def test_failed_validation_and_missing_batch_fail() -> None:
    report = make_report()
    report["validation"]["passed"] = False
    report["validation"]["failures"] = ["max_abs_err 0.2 > atol 0.0001"]
    report["latency"]["compact"] = report["latency"]["compact"][:1]
    failures = compare_reports(report, make_report()).failures
    assert [item.name for item in failures] == [
        "validation passed",
        "latency p50 @ batch 8",
        "latency p99 @ batch 8",
    ]
    assert failures[0].detail == "max_abs_err 0.2 > atol 0.0001"


def test_tolerances_come_from_options_then_recipe_then_defaults() -> None:
    report = parse_report(make_report())
    assert resolve_tolerances(report) == Tolerances(latency=0.10, accuracy=0.005)
    data = make_report()
    data["recipe"]["settings"]["check"] = {"latency_tolerance": 0.3, "accuracy_tolerance": 0.02}
    report = parse_report(data)
    assert resolve_tolerances(report) == Tolerances(latency=0.3, accuracy=0.02)
    assert resolve_tolerances(report, latency=0.05) == Tolerances(latency=0.05, accuracy=0.02)
    slower = slow_down(data, 1, 1.25)
    assert compare_reports(slower, make_report()).passed  # the recipe's 30% allows +25%
    assert not compare_reports(slower, make_report(), Tolerances(latency=0.2)).passed


def test_different_model_or_target_is_noted() -> None:
    report = make_report()
    report["model"]["sha256"] = "ab" * 32
    report["target"]["device"] = "aarch64, 4 cores"
    notes = compare_reports(report, make_report()).notes
    assert any("model differs" in note for note in notes)
    assert any("target device differs" in note for note in notes)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["latency"]["compact"][0].pop("p50_ms"), "missing key 'latency.compact.0.p50_ms'"),
        (lambda r: r.pop("cost"), "missing key 'cost'"),
        (lambda r: r["validation"].update(cosine="high"), "key 'validation.cosine'"),
        (lambda r: r.update(latncy={}), "unknown key 'latncy'"),
        (lambda r: r["versions"].pop("onnx"), "versions must name onnx"),
    ],
)
def test_bad_baseline_exits_2_naming_file_and_key(tmp_path: Path, files, capsys, mutate, expected) -> None:
    report, _ = files
    data = make_report()
    mutate(data)
    bad = dump(tmp_path / "bad_baseline.json", data)
    code, out, err = run_check([str(report), "--baseline", str(bad)], capsys)
    assert code == 2
    assert err.startswith(f"error: {bad}: ")
    assert expected in err
    assert out == ""


def test_missing_or_non_json_input_exits_2(tmp_path: Path, files, capsys) -> None:
    report, baseline = files
    code, _, err = run_check([str(tmp_path / "nope.json"), "--baseline", str(baseline)], capsys)
    assert (code, err.strip()) == (2, f"error: {tmp_path / 'nope.json'}: file not found")
    broken = tmp_path / "broken.json"
    broken.write_text('{"model": {"path": "m.onnx",\n  oops}\n')
    code, _, err = run_check([str(report), "--baseline", str(broken)], capsys)
    assert code == 2 and f"error: {broken}:2: not JSON" in err
    listed = dump(tmp_path / "list.json", [1, 2])  # type: ignore[arg-type]
    code, _, err = run_check([str(listed), "--baseline", str(baseline)], capsys)
    assert code == 2 and "a report is a JSON object, got list" in err


def test_junit_and_markdown_are_written(tmp_path: Path, files, capsys) -> None:
    _, baseline = files
    report = dump(tmp_path / "r.json", slow_down(make_report(), 1, 1.5))
    junit, markdown = tmp_path / "ci" / "check.xml", tmp_path / "ci" / "check.md"
    code, _, _ = run_check(
        [str(report), "--baseline", str(baseline), "--junit", str(junit), "--markdown", str(markdown)], capsys
    )
    assert code == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("9", "2")
    failed = [case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None]
    assert failed == ["latency p50 @ batch 1", "latency p99 @ batch 1"]
    text = markdown.read_text()
    assert text.startswith("## deploysparse check: FAIL (2 of 9 checks)")
    assert "| latency p50 @ batch 1 | 1.420 ms | 2.130 ms | +50.0% | 1.562 ms | FAIL |" in text


def test_update_baseline_accepts_the_report(tmp_path: Path, files, capsys) -> None:
    _, baseline = files
    regressed = dump(tmp_path / "r.json", slow_down(make_report(), 1, 1.5))
    code, out, _ = run_check([str(regressed), "--baseline", str(baseline), "--update-baseline"], capsys)
    assert code == 0 and "baseline updated" in out
    assert baseline.read_bytes() == regressed.read_bytes()
    assert run_check([str(regressed), "--baseline", str(baseline)], capsys)[0] == 0


def test_update_baseline_creates_a_missing_one_but_never_from_a_bad_report(
    tmp_path: Path, files, capsys
) -> None:
    report, _ = files
    fresh = tmp_path / "ci" / "baseline.json"
    code, out, _ = run_check([str(report), "--baseline", str(fresh), "--update-baseline"], capsys)
    assert code == 0 and "baseline created" in out
    assert json.loads(fresh.read_text()) == json.loads(report.read_text())
    data = make_report()
    del data["latency"]
    bad = dump(tmp_path / "bad.json", data)
    code, _, err = run_check([str(bad), "--baseline", str(fresh), "--update-baseline"], capsys)
    assert code == 2 and "missing key 'latency'" in err
    assert json.loads(fresh.read_text()) == json.loads(report.read_text())


def test_parse_report_rejects_non_dict() -> None:
    with pytest.raises(ReportError, match="baseline: a report is a JSON object"):
        compare_reports(make_report(), "not a report")  # type: ignore[arg-type]


def test_the_example_in_docs_ci_md_is_a_valid_report() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "ci.md").read_text()
    example = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
    report = parse_report(example, "docs/ci.md")
    assert compare_reports(report, example).passed
