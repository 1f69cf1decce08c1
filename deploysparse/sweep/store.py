"""Where a sweep keeps its points: `points/<key>/`, one folder per content-hash key, each written whole.

A point's files are staged beside the store and renamed into place in one step, its `result.json`
last, so a crash or a kill mid-point leaves every finished point intact and the half-done one absent;
a re-run finds finished points by key and skips them. results.jsonl/csv are views over the store,
rewritten at the end of every sweep. While a sweep runs, results.jsonl holds the latest row of each
point published so far, one line per key, replaced whole at every publish: a point retried (on
another node, or by a re-run after a failure or a kill) replaces its line, so the file never holds
a point twice, whenever the sweep is stopped.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from deploysparse.atomic import write_text
from deploysparse.budget import TARGETS

CSV_COLUMNS = (
    "key", "status", "model", "criterion", *TARGETS, "precision", "backend", "batch",
    "finetune", "accuracy", "accuracy_original", "accuracy_drop", "top1_agreement", "passed", "p50_ms",
    "p99_ms", "original_p50_ms", "size_bytes", "params", "flops", "flops_ratio", "channels_removed",
    "budget_met", "seconds", "attempts", "device", "node_ip", "node_id", "bench_node_ip", "bench_node_id", "report", "error",
)  # fmt: skip


class ResultStore:
    """The points folder of one sweep output folder."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self.points = outdir / "points"

    def row(self, key: str) -> dict[str, Any] | None:
        """The stored row of a point (finished or failed), None if it never ran."""
        path = self.points / key / "result.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def finished(self, key: str) -> bool:
        row = self.row(key)
        return bool(row and row.get("status") == "ok" and (self.points / key / "report.json").is_file())

    def staging(self) -> Path:
        """A fresh folder for one point's files, on the same file system as the store."""
        self.points.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.points))

    def publish(self, key: str, staging: Path | None, row: dict[str, Any]) -> dict[str, Any]:
        """Move `staging` into `points/<key>` (replacing an earlier failed attempt), then write its row."""
        target = self.points / key
        row = {**row, "report": f"points/{key}/report.json" if row.get("status") == "ok" else None}
        if staging is None:
            staging = self.staging()
        write_text(staging / "result.json", json.dumps(row, indent=1, sort_keys=True) + "\n")
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=".old-", dir=self.points))
            os.replace(target, trash / key)
            os.replace(staging, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, target)
        self._log(row)
        return row

    def _log(self, row: dict[str, Any]) -> None:
        """results.jsonl with `row` in place of any earlier row of its key, written atomically."""
        path = self.outdir / "results.jsonl"
        rows: dict[str, str] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
                    rows[json.loads(line)["key"]] = line
        rows[row["key"]] = json.dumps(row, sort_keys=True)
        write_text(path, "".join(line + "\n" for line in rows.values()))

    def clean_staging(self) -> None:
        """Remove folders a killed run left half-written (never a finished point)."""
        if self.points.is_dir():
            for leftover in self.points.glob(".staging-*"):
                shutil.rmtree(leftover, ignore_errors=True)

    def write_tables(self, rows: list[dict[str, Any]]) -> None:
        """results.jsonl and results.csv: one row per point of this sweep, in sweep order."""
        write_text(self.outdir / "results.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in CSV_COLUMNS})
        write_text(self.outdir / "results.csv", buffer.getvalue())
