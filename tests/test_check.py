"""The CI gate: pass, each kind of regression, bad input, and the JUnit/Markdown/baseline outputs."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deploysparse.check import Tolerances, compare_reports, resolve_tolerances, to_markdown
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


def measured(
    p50: float, seed: int, runs: int = 15, calls: int = 20, run_sd: float = 0.01
) -> list[list[float]]:
    """Call times (ms) about `p50`: a log-normal factor per run (`run_sd`) and per call (2%), seeded."""
    rng = np.random.default_rng(seed)
    per_run = rng.normal(0.0, run_sd, size=(runs, 1))
    return (p50 * np.exp(per_run + rng.normal(0.0, 0.02, size=(runs, calls)))).round(4).tolist()


def timed(
    report: dict[str, Any],
    batch: int,
    p50s: dict[str, float],
    seed: int,
    runs: int = 15,
    calls: int = 20,
    run_sd: float = 0.01,
    load_sd: float = 0.0,
) -> dict[str, Any]:
    """`report` with the models of `p50s` (model -> p50 ms) timed at `batch` in the same rounds: each
    round a factor common to every model (`load_sd`: the machine's load), one per model (`run_sd`)
    and one per call (2%), all log-normal and seeded."""
    rng = np.random.default_rng(seed)
    load = rng.normal(0.0, load_sd, size=(runs, 1))
    for model, p50 in p50s.items():
        per_run = rng.normal(0.0, run_sd, size=(runs, 1))
        rows = p50 * np.exp(load + per_run + rng.normal(0.0, 0.02, size=(runs, calls)))
        set_point(report, model, batch, rows.round(4).tolist())
    return report


def set_point(report: dict[str, Any], model: str, batch: int, rows: list[list[float]]) -> dict[str, Any]:
    """Replace `model`'s runs at `batch` with runs of these calls, the pooled percentiles with them."""
    pooled = np.concatenate(rows)
    points = report["latency"].setdefault(model, [])
    point = next((p for p in points if p["batch"] == batch), None)
    if point is None:
        point = {"batch": batch, "throughput_per_s": batch * 1e3 / float(np.median(pooled))}
        points.append(point)
    point.update(
        p50_ms=float(np.percentile(pooled, 50)),
        p90_ms=float(np.percentile(pooled, 90)),
        p99_ms=float(np.percentile(pooled, 99)),
        runs=[
            {"p50_ms": float(np.median(r)), "p99_ms": float(np.percentile(r, 99)), "samples_ms": list(r)}
            for r in rows
        ],
    )
    return report


def slow_down(report: dict[str, Any], batch: int, factor: float, model: str = "compact") -> dict[str, Any]:
    """Every call of `model` at `batch` `factor` times slower."""
    point = next(p for p in report["latency"][model] if p["batch"] == batch)
    return set_point(report, model, batch, [[t * factor for t in run["samples_ms"]] for run in point["runs"]])


def pair(factor: float, batch: int = 8, run_sd: float = 0.01, runs: int = 15, **kw: Any) -> tuple[dict, dict]:
    """A report and its baseline (same model, same machine) whose compact model at `batch` is
    `factor` times slower, the original (12 ms) timed beside it, each report in its own seeded runs."""
    args = {"runs": runs, "run_sd": run_sd, **kw}
    baseline = timed(make_report(), batch, {"original": 12.0, "compact": 8.0}, seed=1, **args)
    report = timed(make_report(), batch, {"original": 12.0, "compact": 8.0 * factor}, seed=2, **args)
    return report, baseline


def verdicts(result) -> dict[str, str]:
    return {item.name: item.verdict for item in result.items}


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return dump(tmp_path / "report.json", make_report()), dump(tmp_path / "baseline.json", make_report())


def test_identical_reports_pass(files: tuple[Path, Path], capsys) -> None:
    report, baseline = files
    code, out, _ = run_check([str(report), "--baseline", str(baseline)], capsys)
    assert code == 0
    assert "PASS: 9 checks (latency +10% at 95% confidence" in out
    out = " ".join(out.split())  # rich wraps the line at the console's width
    assert (
        "mode: latency compared relative to the original timed in the same run: the same model on a "
        "machine like the baseline's (the fingerprints match)"
    ) in out
    assert "5 runs x 20 calls, runs vary" in out


def test_a_slowdown_beyond_the_tolerance_regresses_and_one_within_passes(tmp_path: Path, capsys) -> None:
    report, baseline = pair(1.25)
    base = dump(tmp_path / "baseline.json", baseline)
    code, out, _ = run_check([str(dump(tmp_path / "r.json", report)), "--baseline", str(base)], capsys)
    assert code == 1
    assert "REGRESSED" in out and "FAIL: 1 of 9 checks regressed" in out  # p50 @ 8; p99 not gated
    assert "+25." in out
    result = compare_reports(report, baseline)
    (item,) = result.failures
    assert item.name == "latency p50 @ batch 8" and item.interval is not None and item.interval[0] > 0.10
    within, _ = pair(1.03)
    assert compare_reports(within, baseline).verdict == "pass"
    code, _, _ = run_check(
        [str(dump(tmp_path / "r.json", report)), "--baseline", str(base), "--latency-tolerance", "0.4"],
        capsys,
    )
    assert code == 0


def test_noise_wider_than_the_tolerance_is_inconclusive_with_exit_4(tmp_path: Path, capsys) -> None:
    """5 runs varying by 15% cannot tell +10% from +0%: neither regressed nor passed."""
    report, baseline = pair(1.10, run_sd=0.15, runs=5)
    args = [str(dump(tmp_path / "r.json", report)), "--baseline", str(dump(tmp_path / "b.json", baseline))]
    code, out, _ = run_check(args, capsys)
    assert code == 4
    assert "INCONCLUSIVE: 1 of 9 checks could not be decided" in out
    item = compare_reports(report, baseline).undecided[0]
    assert item.name == "latency p50 @ batch 8"
    assert "straddles the +10% tolerance" in item.detail
    assert "runs vary ±" in item.detail
    assert "(bench.repeats)" in item.detail  # how many runs would decide, or that the baseline needs more


def test_one_noisy_run_does_not_fail_the_gate_and_is_named(tmp_path: Path, capsys) -> None:
    report, baseline = pair(1.0)
    point = report["latency"]["compact"][1]
    rows = [run["samples_ms"] for run in point["runs"]]
    rows[2] = [t * 3 for t in rows[2]]  # a neighbour hit run 3 hard
    set_point(report, "compact", 8, rows)
    args = [str(dump(tmp_path / "r.json", report)), "--baseline", str(dump(tmp_path / "b.json", baseline))]
    assert run_check(args, capsys)[0] == 0
    item = next(i for i in compare_reports(report, baseline).items if i.name == "latency p50 @ batch 8")
    assert "outlier run 3 (+20" in item.detail  # about +200%


def test_fewer_than_three_runs_are_inconclusive() -> None:
    """One run shows no run-to-run noise to build an interval from, however many calls it has."""
    report, baseline = pair(1.0, runs=1)
    item = next(i for i in compare_reports(report, baseline).items if i.name == "latency p50 @ batch 8")
    assert item.verdict == "inconclusive"
    assert "an interval needs at least 3 runs per report (bench.repeats); has 1 and 1" in item.detail


def test_p99_is_gated_only_with_enough_calls(tmp_path: Path) -> None:
    """p99 of 300 calls rests on 3 calls: reported, not gated. From 1000 calls (10 beyond it) it is
    gated, and a slower tail regresses while p50 passes."""
    report, baseline = pair(1.0)
    item = next(i for i in compare_reports(report, baseline).items if i.name == "latency p99 @ batch 8")
    assert item.verdict == "not gated"
    assert "p99 of the report's 300 calls rests on 3 beyond it; gated from 1000 calls" in item.detail
    assert item.current is not None and item.baseline is not None  # reported all the same
    report, baseline = pair(1.0, calls=70)
    assert verdicts(compare_reports(report, baseline))["latency p99 @ batch 8"] == "pass"
    rows = [run["samples_ms"] for run in report["latency"]["compact"][1]["runs"]]
    slow_tail = [[t * 1.8 if i < 2 else t for i, t in enumerate(run)] for run in rows]  # 3% of calls
    result = compare_reports(set_point(report, "compact", 8, slow_tail), baseline)
    assert verdicts(result)["latency p99 @ batch 8"] == "regressed"
    assert verdicts(result)["latency p50 @ batch 8"] == "pass"


def test_a_baseline_from_another_cpu_does_not_fail_when_only_the_machine_changed(
    tmp_path: Path, capsys
) -> None:
    """The baseline ran on an Intel host twice as fast as this AMD one, where the original's
    denormal weights cost 2x (here nothing): in milliseconds everything regressed, and relative to
    the original as is the compact model would look 2x worse; relative to the flushed original timed
    in the same runs nothing changed, and nothing did but the machine."""
    baseline, report = make_report(), make_report()
    baseline["latency"]["fingerprint"].update(
        cpu="Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
        cpu_flags=["avx", "avx2", "avx512_vnni", "avx512f", "f16c", "fma"],
    )
    for batch in (1, 8):
        for seed, (model, cost) in enumerate(
            {"compact": 1.0, "original_flushed": 1.5, "original": 1.5}.items()
        ):
            denormals = 2.0 if model == "original" else 1.0  # only the Intel host pays for them
            set_point(baseline, model, batch, measured(0.7 * batch * cost * denormals, seed=seed))
            set_point(report, model, batch, measured(1.4 * batch * cost, seed=seed + 10))
    assert compare_reports(report, baseline, latency_mode="absolute").verdict == "regressed"
    result = compare_reports(report, baseline)
    assert (result.mode.name, result.mode.reference, result.verdict) == (
        "relative",
        "original_flushed",
        "pass",
    )
    args = [str(dump(tmp_path / "r.json", report)), "--baseline", str(dump(tmp_path / "b.json", baseline))]
    code, out, _ = run_check(args, capsys)
    out = " ".join(out.split())  # rich wraps the line at the console's width
    assert code == 0
    assert "mode: latency compared relative to the flushed original timed in the same run" in out
    assert (
        "the machine differs from the baseline's (cpu: 'AMD EPYC 7B13' vs 'Intel(R) Xeon(R) Platinum" in out
    )
    assert "cpu_flags: [" in out
    item = next(i for i in result.items if i.name == "latency p50 @ batch 1")
    assert item.kind == "ratio" and item.show(item.current) == f"{item.current:.3f}x"


def test_a_busier_runner_does_not_fail_the_same_model(tmp_path: Path) -> None:
    """The same model on the same kind of machine, the runner 40% slower in every round (other jobs
    on it): in milliseconds everything regressed, relative to the original timed in the same rounds
    nothing did, and the original is the same bytes, so nothing else could have."""
    report, baseline = pair(1.0)
    busier = copy.deepcopy(report)
    for model in ("original", "compact"):
        slow_down(busier, 8, 1.4, model)
    assert compare_reports(busier, baseline, latency_mode="absolute").verdict == "regressed"
    result = compare_reports(busier, baseline)
    assert result.mode.name == "relative" and "the same model" in result.mode.reason
    assert result.verdict == "pass"


def test_a_changed_model_is_compared_in_milliseconds_on_the_baselines_machine_only() -> None:
    """A model slower as a whole (an extra layer: original and compact alike) regresses in
    milliseconds on the baseline's machine; on another machine the ratio to its own original cannot
    see it (the mode says so), while a pruning that lost its speed-up regresses there too."""
    baseline = timed(make_report(), 8, {"compact": 8.0, "original_flushed": 12.0, "original": 12.0}, seed=1)

    def changed(compact: float, whole: float) -> dict[str, Any]:
        p50s = {"compact": 8.0 * compact * whole, "original_flushed": 12.0 * whole, "original": 12.0 * whole}
        report = timed(make_report(), 8, p50s, seed=2)
        report["model"]["sha256"] = "ab" * 32
        return report

    lost_speedup, slower_model = changed(1.3, 1.0), changed(1.0, 1.3)
    here = compare_reports(slower_model, baseline)
    assert here.mode.name == "absolute" and "the model changed" in here.mode.reason
    assert verdicts(here)["latency p50 @ batch 8"] == "regressed"
    other_machine = copy.deepcopy(baseline)
    other_machine["latency"]["fingerprint"]["cores"] = 4
    there = compare_reports(slower_model, other_machine)
    assert there.mode.name == "relative" and "a model slower as a whole does not show" in there.mode.reason
    assert verdicts(there)["latency p50 @ batch 8"] == "pass"
    assert verdicts(compare_reports(lost_speedup, other_machine))["latency p50 @ batch 8"] == "regressed"
    forced = compare_reports(slower_model, baseline, latency_mode="relative")
    assert forced.mode.reason == "asked for (--latency-mode relative)" and forced.verdict == "pass"


def test_a_changed_model_is_compared_relative_to_the_yardstick_when_both_timed_it() -> None:
    """A retrained model of the same speed on a runner 40% busier in every round: in milliseconds it
    regressed; relative to the yardstick timed in the same rounds it did not, while a model 30%
    slower as a whole regresses there too. A yardstick of another version is not compared with."""
    p50s = {"compact": 8.0, "original": 12.0, "yardstick": 5.0}
    baseline = timed(make_report(), 8, p50s, seed=1)
    busier = {name: ms * 1.4 for name, ms in p50s.items()}
    retrained = timed(make_report(), 8, busier, seed=2)
    slower = timed(make_report(), 8, {**p50s, "compact": 8.0 * 1.3, "original": 12.0 * 1.3}, seed=3)
    for report in (baseline, retrained, slower):
        report["latency"]["yardstick_version"] = "v1"
    for report in (retrained, slower):
        report["model"]["sha256"] = "ab" * 32
    result = compare_reports(retrained, baseline)
    assert result.mode.name == "relative" and result.mode.reference == "yardstick"
    assert "the yardstick" in result.mode.describe() and "model changed" in result.mode.reason
    assert verdicts(result)["latency p50 @ batch 8"] == "pass"
    assert (
        verdicts(compare_reports(retrained, baseline, latency_mode="absolute"))["latency p50 @ batch 8"]
        == "regressed"
    )
    assert verdicts(compare_reports(slower, baseline))["latency p50 @ batch 8"] == "regressed"
    retrained["latency"]["yardstick_version"] = "v2"
    assert compare_reports(retrained, baseline).mode.name == "absolute"
    forced = compare_reports(retrained, baseline, latency_mode="yardstick")
    assert forced.mode.name == "none" and "same yardstick" in forced.mode.reason


def test_an_old_baseline_without_fingerprint_or_calls_is_compared_relative() -> None:
    """A baseline written before deploysparse kept calls and fingerprints: no proof of the same
    machine, so relative; each run's p50 stands for the run; p99 is reported, not gated."""
    baseline = make_report()
    del baseline["latency"]["fingerprint"], baseline["latency"]["timing"]
    for model in ("original", "compact"):
        for point in baseline["latency"][model]:
            for run in point["runs"]:
                del run["samples_ms"]
    result = compare_reports(make_report(), baseline)
    assert result.mode.name == "relative" and result.mode.reference == "original"
    assert "the baseline records no machine fingerprint" in result.mode.reason
    assert result.verdict == "pass"
    assert verdicts(result)["latency p50 @ batch 1"] == "pass"  # gated on the runs' p50s
    item = next(i for i in result.items if i.name == "latency p99 @ batch 1")
    assert item.verdict == "not gated"
    assert "the baseline keeps no per-call times" in item.detail


def test_without_an_original_in_both_and_another_machine_latency_is_reported_not_gated() -> None:
    baseline, report = make_report(), make_report()
    baseline["latency"]["fingerprint"]["threads"] = 1
    report["latency"]["original"] = []
    result = compare_reports(slow_down(report, 8, 3.0), baseline)
    assert result.mode.name == "none"
    assert {v for n, v in verdicts(result).items() if n.startswith("latency")} == {"not gated"}
    assert result.verdict == "pass"  # nothing comparable was measured; the mode line says so
    assert "no original timed in both reports" in result.mode.describe()


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
    assert resolve_tolerances(report) == Tolerances(latency=0.10, accuracy=0.005, confidence=0.95)
    data = make_report()
    data["recipe"]["settings"]["check"] = {"latency_tolerance": 0.3, "accuracy_tolerance": 0.02}
    report = parse_report(data)
    assert resolve_tolerances(report) == Tolerances(latency=0.3, accuracy=0.02)
    assert resolve_tolerances(report, latency=0.05, confidence=0.9) == Tolerances(0.05, 0.02, 0.9)
    slower, baseline = pair(1.25)
    slower["recipe"]["settings"]["check"] = {"latency_tolerance": 0.4}
    assert compare_reports(slower, baseline).passed  # the recipe's 40% allows +25%
    assert compare_reports(slower, baseline, Tolerances(latency=0.2)).verdict == "regressed"


def test_different_model_or_target_or_a_busy_machine_is_noted() -> None:
    report = make_report()
    report["model"]["sha256"] = "ab" * 32
    report["target"]["precision"] = "fp16"
    report["latency"]["timing"]["load_average"] = [1.5, 19.93]
    notes = compare_reports(report, make_report()).notes
    assert any("model differs" in note for note in notes)
    assert any("target precision differs" in note for note in notes)
    assert (
        "the report was measured on a busy machine (load average 19.9 on 2 cores): expect wide intervals"
        in notes
    )
    assert not any("busy" in note for note in compare_reports(make_report(), make_report()).notes)


def test_without_an_original_the_same_machine_compares_milliseconds() -> None:
    report, baseline = make_report(), make_report()
    report["latency"]["original"] = []
    result = compare_reports(report, baseline)
    assert result.mode.name == "absolute" and "no original timed in both" in result.mode.reason
    assert result.verdict == "pass"


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


def test_junit_and_markdown_carry_every_verdict(tmp_path: Path, capsys) -> None:
    """Batch 8 regressed, batch 1 inconclusive (5 noisy runs a side), p99 not gated: JUnit has a
    failure, a skipped case and passing ones; Markdown the verdict of each and the mode."""
    report, baseline = pair(1.25)
    set_point(baseline, "compact", 1, measured(1.4, seed=3, runs=5, run_sd=0.15))
    set_point(report, "compact", 1, measured(1.4 * 1.1, seed=4, runs=5, run_sd=0.15))
    junit, markdown = tmp_path / "ci" / "check.xml", tmp_path / "ci" / "check.md"
    args = [str(dump(tmp_path / "r.json", report)), "--baseline", str(dump(tmp_path / "b.json", baseline))]
    code, _, _ = run_check([*args, "--junit", str(junit), "--markdown", str(markdown)], capsys)
    assert code == 1  # a regression wins over an undecided check
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("9", "1", "1")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert cases["latency p50 @ batch 8"].find("failure") is not None
    skipped = cases["latency p50 @ batch 1"].find("skipped")
    assert skipped is not None and "INCONCLUSIVE" in skipped.get("message", "")
    assert "not gated" in (cases["latency p99 @ batch 8"].findtext("system-out") or "")
    mode = suite.find("properties/property")
    assert mode is not None and mode.get("value", "").startswith("latency compared relative to the original")
    text = markdown.read_text()
    assert text.startswith("## deploysparse check: FAIL (1 of 9 checks)")
    assert "Mode: latency compared relative to the original timed in the same run: the same model" in text
    row = next(line for line in text.splitlines() if line.startswith("| latency p50 @ batch 8 |"))
    assert "| REGRESSED |" in row and " .. " in row
    assert "| INCONCLUSIVE |" in next(line for line in text.splitlines() if "p50 @ batch 1 |" in line)
    assert "| not gated |" in next(line for line in text.splitlines() if "p99 @ batch 8 |" in line)
    inconclusive = compare_reports(*pair(1.10, run_sd=0.15, runs=5))
    assert to_markdown(inconclusive).startswith("## deploysparse check: INCONCLUSIVE (1 of 9 checks)")


def test_update_baseline_accepts_the_report(tmp_path: Path, files, capsys) -> None:
    _, baseline = files
    regressed = dump(tmp_path / "r.json", slow_down(make_report(), 1, 1.5))
    assert run_check([str(regressed), "--baseline", str(baseline)], capsys)[0] == 1
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
