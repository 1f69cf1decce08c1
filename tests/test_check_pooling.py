"""Pooled reports in the CI gate: several baselines (or reports) of one model on one machine kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deploysparse.check import compare_reports
from deploysparse.check.pooling import pool_reports
from deploysparse.errors import UsageError
from deploysparse.report.schema import parse_report
from tests.report_factory import make_report
from tests.test_check import dump, run_check, timed


def baseline_runs(seeds: range, runs: int = 15, factor: float = 1.0) -> list[dict]:
    """Reports of the same model, each timed in its own seeded runs (compact 8 ms, original 12 ms)."""
    return [
        timed(make_report(), 8, {"original": 12.0, "compact": 8.0 * factor}, seed=s, runs=runs, run_sd=0.03)
        for s in seeds
    ]


def parsed(reports: list[dict]) -> list[tuple[Path, object]]:
    return [(Path(f"b{i}.json"), parse_report(r)) for i, r in enumerate(reports)]


def test_pooling_appends_every_run_and_the_statistic_pools_their_calls() -> None:
    reports = baseline_runs(range(1, 4), runs=5)
    inputs = parsed(reports)
    pooled = pool_reports(inputs, "--baseline")
    point = pooled.latency.compact_at(8)
    assert len(point.runs) == 15
    calls = np.concatenate([run["samples_ms"] for r in reports for run in r["latency"]["compact"][1]["runs"]])
    assert np.allclose(np.concatenate(point.samples()), calls)
    assert len(pooled.latency.original_at(8).runs) == 15
    first = inputs[0][1]
    assert [len(r.latency.compact_at(8).runs) for _, r in inputs] == [5, 5, 5]  # the inputs are left alone
    assert pooled.model == first.model and pooled.validation == first.validation


def test_pooled_baselines_narrow_the_interval_of_the_change() -> None:
    """Each side's variance of the log-statistic is v/runs; a report against one baseline of 15 runs
    has 2v/15, against four pooled ones v/15 + v/60: the interval is sqrt(2 / 1.25) = 1.26x narrower.
    Averaged over 8 seeded reports, whose own widths scatter by about 1/sqrt(2 x 15) = 18% each,
    the ratio of the mean widths stays above 1.1."""
    single, pooled = [], []
    for seed in range(8):
        report = baseline_runs(range(100 + seed, 101 + seed), factor=1.05)[0]
        baselines = baseline_runs(range(10 * seed, 10 * seed + 4))
        for widths, side in ((single, baselines[:1]), (pooled, baselines)):
            base = pool_reports(parsed(side), "--baseline")
            item = next(i for i in compare_reports(report, base).items if i.name == "latency p50 @ batch 8")
            widths.append(item.interval[1] - item.interval[0])
    assert np.mean(single) / np.mean(pooled) > 1.1


def test_check_cli_pools_baselines_and_reports_and_says_so(tmp_path: Path, capsys) -> None:
    bases = [dump(tmp_path / f"b{i}.json", r) for i, r in enumerate(baseline_runs(range(1, 4)))]
    slower = [dump(tmp_path / f"r{i}.json", r) for i, r in enumerate(baseline_runs(range(5, 7), factor=1.5))]
    same = dump(tmp_path / "same.json", baseline_runs(range(7, 8))[0])
    before = [p.read_bytes() for p in bases]
    options = [arg for path in bases for arg in ("--baseline", str(path))]
    code, out, _ = run_check([*map(str, slower), *options], capsys)
    out = " ".join(out.split())
    assert code == 1
    assert (
        "the report pools 2 reports of the same model and machine (10 runs at batch 1, 30 runs at batch 8)"
        in out
    )
    assert (
        "the baseline pools 3 reports of the same model and machine (15 runs at batch 1, 45 runs at batch 8)"
        in out
    )
    code, out, _ = run_check([str(same), *options], capsys)
    assert code == 0 and "the report pools" not in out
    assert [p.read_bytes() for p in bases] == before


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["model"].update(sha256="0" * 64), "another model (sha256 000000000000"),
        (lambda r: r["latency"]["fingerprint"].update(cpu="Intel(R) Xeon(R)"), "another machine (cpu:"),
        (lambda r: r["target"].update(precision="int8"), "another target precision"),
        (lambda r: r["latency"].update(yardstick_version="other"), "another yardstick version"),
    ],
)
def test_reports_that_differ_are_not_pooled_and_the_file_is_named(
    tmp_path: Path, capsys, mutate, expected
) -> None:
    first, other = baseline_runs(range(1, 3))
    mutate(other)
    args = [str(dump(tmp_path / "r.json", first))]
    args += [
        "--baseline",
        str(dump(tmp_path / "b1.json", first)),
        "--baseline",
        str(dump(tmp_path / "b2.json", other)),
    ]
    code, _, err = run_check(args, capsys)
    assert code == 2
    assert err.startswith(
        f"error: --baseline {tmp_path / 'b2.json'}: cannot be pooled with {tmp_path / 'b1.json'}"
    )
    assert expected in err and len(err.strip().splitlines()) == 1
    with pytest.raises(UsageError):
        pool_reports(parsed([first, other]), "--baseline")


def test_the_same_run_twice_is_not_pooled(tmp_path: Path, capsys) -> None:
    first, other = baseline_runs(range(1, 3))
    copy = dump(tmp_path / "copy.json", first)
    args = [str(dump(tmp_path / "r.json", other)), "--baseline", str(dump(tmp_path / "b.json", first))]
    code, _, err = run_check([*args, "--baseline", str(copy)], capsys)
    assert code == 2
    assert f"--baseline {copy}: the same run as {tmp_path / 'b.json'}" in err


def test_update_baseline_takes_one_report_and_one_baseline(tmp_path: Path, capsys) -> None:
    report = dump(tmp_path / "r.json", make_report())
    bases = [dump(tmp_path / f"b{i}.json", make_report()) for i in range(2)]
    before = [p.read_bytes() for p in bases]
    args = [str(report), "--baseline", str(bases[0]), "--baseline", str(bases[1]), "--update-baseline"]
    code, _, err = run_check(args, capsys)
    assert code == 2 and "--update-baseline takes one report and one --baseline" in err
    assert [p.read_bytes() for p in bases] == before
