"""Sweeps on Ray Tune, run locally on two CPUs: the same results as in-process (latency aside), a
crashed trial retried and a hopeless one recorded, and no Ray process left behind.

Skipped without Ray (`pip install 'deploysparse[scale]'`; `make test` installs it).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from deploysparse.sweep import load_sweep, run_sweep  # noqa: E402
from deploysparse.sweep.config import RaySettings  # noqa: E402
from tests.test_sweep import SWEEP, write_sweep  # noqa: E402

# A local Ray and real sweep points. `--ray auto` joins any Ray process it finds on the machine, so a
# Ray started by one module must not be running while another module's test starts its own: the Ray
# modules hold conftest's one_ray_at_a_time lock, and ask `--dist loadgroup` for one worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]
LABEL = RaySettings().latency_resource
TIMING = {"p50_ms", "p99_ms", "original_p50_ms", "seconds", "device", "attempts", "report", "phases"}
PLACEMENT = {"node_id", "node_ip", "bench_node_id", "bench_node_ip"}  # only on Ray


def descendants(root: int) -> set[int]:
    """Every live process below `root` (Ray's GCS and raylet are children of the driver, its workers
    children of the raylet)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def wait_gone(pids: set[int], seconds: float = 30.0) -> set[int]:
    """The pids still alive after waiting up to `seconds` for them to exit (a wait, not a timing check)."""
    deadline = time.monotonic() + seconds
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if Path(f"/proc/{p}").exists() and "(Z)" not in _state(p)}
        time.sleep(0.2)
    return pids


def _state(pid: int) -> str:
    try:
        return "(" + Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] + ")"
    except OSError:
        return "(Z)"


def shutdown_and_check() -> None:
    """Stop the Ray this process started and make sure none of its processes outlive it."""
    ours = descendants(os.getpid())
    ray.shutdown()
    assert wait_gone(ours) == set(), "Ray left processes behind"


@pytest.fixture(scope="module")
def local_ray(one_ray_at_a_time):
    """One local Ray for this module's tests, as the tests of a user would start it."""
    ray.init(num_cpus=2, resources={LABEL: 1}, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        shutdown_and_check()


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING | PLACEMENT} for r in rows]


def test_ray_gives_the_in_process_results(tmp_path: Path, local_ray) -> None:
    path = write_sweep(tmp_path)
    here = run_sweep(load_sweep(path), tmp_path / "here")
    on_ray = run_sweep(load_sweep(path), tmp_path / "ray", ray_address="auto")
    assert on_ray.ran == 2 and [r["status"] for r in on_ray.rows] == ["ok", "ok"]
    assert comparable(on_ray.rows) == comparable(here.rows)
    assert on_ray.best["key"] == here.best["key"]
    for row in on_ray.rows:  # the files came back from the trial's checkpoint
        point = tmp_path / "ray" / "points" / row["key"]
        assert (point / "compact.onnx").read_bytes() == (
            tmp_path / "here" / "points" / row["key"] / "compact.onnx"
        ).read_bytes()
    tune_logs = tmp_path / "ray" / "tune"
    assert len(list(tune_logs.rglob("progress.csv"))) == 2, "Tune's per-trial result logs are kept"
    assert not list(tune_logs.rglob("checkpoint_*")), "the points' files are not kept twice"
    best = json.loads((tmp_path / "ray" / "best.json").read_text())
    assert best["target"]["device"]  # measured by the task on the labelled node
    # which also made the flushed original from the bytes it got, and profiled every layer
    timed = [k for k, v in best["latency"].items() if isinstance(v, list) and v]
    assert timed == ["original", "original_flushed", "compact", "yardstick"]
    assert best["latency"]["fingerprint"]["device"]  # the benchmarking node's machine
    assert best["layers"]["models"] == ["original", "original_flushed", "compact"]


FLAKY = """\
from pathlib import Path

MARKER = Path({marker!r})


def once(module):
    # the first attempt of every point crashes, the retry succeeds
    if not MARKER.exists():
        MARKER.write_text("crashed once")
        raise RuntimeError("simulated node crash")
    return module


def always(module):
    raise RuntimeError("simulated bug in the user's training")
"""


def flaky_sweep(tmp_path: Path, function: str, retries: int) -> Path:
    folder = tmp_path / "flaky"
    folder.mkdir(exist_ok=True)
    (folder / "flaky_train.py").write_text(FLAKY.format(marker=str(tmp_path / "marker")))
    text = SWEEP.replace("flops_target: [0.5, 0.1]", "flops_target: [0.5]")
    text += f"finetune: flaky_train:{function}\nray: {{max_retries: {retries}}}\n"
    return write_sweep(folder, text)


def test_a_crashed_trial_is_retried_and_a_hopeless_one_recorded(tmp_path: Path, local_ray) -> None:
    outcome = run_sweep(load_sweep(flaky_sweep(tmp_path, "once", 1)), tmp_path / "once", ray_address="auto")
    (row,) = outcome.rows
    assert row["status"] == "ok" and row["attempts"] == 2
    assert (tmp_path / "marker").read_text() == "crashed once"

    outcome = run_sweep(
        load_sweep(flaky_sweep(tmp_path, "always", 1)), tmp_path / "always", ray_address="auto"
    )
    (row,) = outcome.rows
    assert row["status"] == "failed" and row["attempts"] == 2
    assert "simulated bug in the user's training" in row["error"]
    assert "RuntimeError" in row["traceback"]
    stored = json.loads((tmp_path / "always" / "points" / row["key"] / "result.json").read_text())
    assert stored["status"] == "failed"


def test_missing_latency_label_is_a_clear_error(tmp_path: Path, local_ray) -> None:
    from deploysparse.errors import UsageError

    text = SWEEP + "ray: {latency_resource: bench-l4}\n"
    with pytest.raises(UsageError, match="no Ray node offers the resource 'bench-l4'"):
        run_sweep(load_sweep(write_sweep(tmp_path, text)), tmp_path / "out", ray_address="auto")


def test_random_search_draws_points_from_a_range_and_chooses_by_the_rule(tmp_path: Path, local_ray) -> None:
    text = SWEEP.replace("flops_target: [0.5, 0.1]", "flops_target: {min: 0.2, max: 0.6}")
    text += "search: {algorithm: random, samples: 2, seed: 3}\n"
    outcome = run_sweep(load_sweep(write_sweep(tmp_path, text)), tmp_path / "out", ray_address="auto")
    assert len(outcome.rows) == 2 and all(r["status"] == "ok" for r in outcome.rows)
    targets = [r["flops_target"] for r in outcome.rows]
    assert all(0.2 <= t <= 0.6 for t in targets)
    assert all(abs(t * 100 - round(t * 100)) < 1e-9 for t in targets)  # quantised to 0.01
    assert outcome.best["flops_ratio"] == min(r["flops_ratio"] for r in outcome.rows)
