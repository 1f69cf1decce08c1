"""benchmarks/int8.py runs: its small setting builds fp32, int8 all and int8 auto, times them and
writes the table's rows, the pruned + quantised row included (a tiny ResNet-50 trained for one epoch),
with the int8 choices judged on the validation split (--judge-val)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import int8

pytestmark = pytest.mark.slow  # torch exports, a short training and several int8 builds


def test_the_int8_benchmark_runs_small(tmp_path: Path, capsys) -> None:
    assert (
        int8.main(
            [
                "--small",
                "--models",
                "digits",
                "--pruned",
                "--judge-val",
                "--cache",
                str(tmp_path / "cache"),
                "--json",
                str(tmp_path / "int8.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("CPU: ") and "int8 flags:" in out and "| model | variant |" in out
    report = json.loads((tmp_path / "int8.json").read_text())
    variants = [(row["model"].split(" (")[0], row["variant"]) for row in report["rows"]]
    assert variants == [
        ("digits CNN", "fp32"),
        ("digits CNN", "int8 all"),
        ("digits CNN", "int8 auto"),
        ("ResNet-50", "original fp32"),
        ("ResNet-50", "compact fp32"),
        ("ResNet-50", "compact int8"),
    ]
    digits = report["rows"][:3]
    assert all(row["ms"] > 0 and row["size_mb"] > 0 and 0 <= row["accuracy"] <= 1 for row in digits)
    assert (
        digits[1]["size_mb"] < digits[0]["size_mb"] / 2
    )  # int8 weights: a quarter of the bytes, plus scales
    builds = report["builds"]["digits CNN (16x16, trained)"]
    assert [b["build"] for b in builds] == ["all", "auto"]
    assert builds[0]["quantization"]["layers"]["mode"] == "all"
    # --judge-val: the builds chose on the validation split, the rows measure the test split
    assert (
        builds[0]["quantization"]["calibration"]["chosen_by"]
        == "agreement with fp32 on 180 validation samples"
    )
