"""benchmarks/torchvision_zoo.py runs, resumes and writes its table (one small model; the full run
is the lead's, on a quiet machine). Skipped without torchvision, which no extra installs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "torchvision_zoo.py"

pytestmark = [
    pytest.mark.slow,  # two exports, a prune CLI and Torch-Pruning: 20-60 s
    pytest.mark.skipif(
        importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed"
    ),
]


def zoo(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def test_one_model_both_tools_then_resumed(tmp_path: Path) -> None:
    tools = "deploysparse,torch-pruning" if importlib.util.find_spec("torch_pruning") else "deploysparse"
    args = (
        "--only",
        "mobilenet_v3_*",
        "--skip",
        "mobilenet_v3_large",
        "--input-size",
        "64",
        "--tools",
        tools,
    )
    done = zoo(tmp_path, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["model"], r["tool"]) for r in rows] == [("mobilenet_v3_small", t) for t in tools.split(",")]
    for row in rows:
        assert not row.get("error"), row
        assert row["pruned"] and row["shape_ok"] and row["channels_removed"] > 0
        assert 0 < row["macs_kept"] < 1 and 0 < row["params_kept"] < 1
        assert 0.1 < row["min_kept"] <= 1  # no layer gutted at --ratio 0.3
    ours = rows[0]
    assert ours["budget_met"] is True and ours["budget"]["target"] == "ratio"
    table = (tmp_path / "zoo.md").read_text()
    assert "| mobilenet_v3_small | 2.5 | pruned |" in table
    assert "- deploysparse: pruned with the original's output shape 1 / 1" in table
    assert json.loads((tmp_path / "zoo.json").read_text())["rows"]

    again = zoo(tmp_path, *args)  # every row stored: nothing runs again
    assert again.returncode == 0, again.stderr[-3000:]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == len(rows)
