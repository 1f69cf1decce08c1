"""The sweep's store writes each point once: results.jsonl keyed by point (a retry or a re-run replaces
its line), points/<key>/ replaced whole; and a point's phases add up to its time. No model is run."""

from __future__ import annotations

import json
import time
from pathlib import Path

from deploysparse.sweep.phases import PointClock, published
from deploysparse.sweep.store import ResultStore


def log_rows(outdir: Path) -> list[dict]:
    return [json.loads(line) for line in (outdir / "results.jsonl").read_text().splitlines()]


def staged(store: ResultStore, content: str) -> Path:
    folder = store.staging()
    (folder / "report.json").write_text(content)
    return folder


def test_a_point_published_again_replaces_its_row_and_its_folder(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.publish("a", None, {"key": "a", "status": "failed", "error": "node lost"})
    store.publish("b", staged(store, "b"), {"key": "b", "status": "ok"})
    store.publish("a", staged(store, "a, second attempt"), {"key": "a", "status": "ok", "attempts": 2})
    rows = log_rows(tmp_path)
    assert [(r["key"], r["status"]) for r in rows] == [("a", "ok"), ("b", "ok")]
    assert rows[0]["attempts"] == 2
    assert store.row("a") == rows[0]
    assert (tmp_path / "points" / "a" / "report.json").read_text() == "a, second attempt"
    assert sorted(p.name for p in (tmp_path / "points").iterdir()) == ["a", "b"]  # no staging left


def test_a_torn_line_of_an_older_log_is_dropped_not_repeated(tmp_path: Path) -> None:
    """An append-only results.jsonl (before keyed writes) killed mid-line leaves a torn last line."""
    (tmp_path / "results.jsonl").write_text(json.dumps({"key": "a", "status": "ok"}) + '\n{"key": "b", "sta')
    store = ResultStore(tmp_path)
    store.publish("b", staged(store, "b"), {"key": "b", "status": "ok"})
    assert [r["key"] for r in log_rows(tmp_path)] == ["a", "b"]


def test_phases_split_a_points_time_between_its_steps_and_the_benchmark(tmp_path: Path) -> None:
    clock = PointClock()
    clock.transfer_s = 0.25

    def measure(recipe, original, compact):
        time.sleep(0.05)
        clock.bench_s = 0.01  # what the benchmarking node reported for the measurement alone
        return {"latency": "section"}, "device"

    assert clock.timed(measure)(None, "original.onnx", tmp_path / "compact.onnx") == (
        {"latency": "section"},
        "device",
    )
    call = clock.measure_call_s
    assert call >= 0.05
    phases = clock.phases(point_seconds=call + 2.0)
    assert phases["transfer_s"] == 0.25
    assert phases["bench_s"] == 0.01
    assert phases["bench_wait_s"] == round(call - 0.01, 3)
    assert phases["point_s"] == 2.0
    assert clock.started <= phases["ended"]
    row = published({"key": "a", "phases": phases})
    assert row["phases"]["published"] >= phases["ended"]
    assert published({"key": "b", "status": "failed"}) == {"key": "b", "status": "failed"}
