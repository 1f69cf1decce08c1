"""`deploysparse sweep --ray ADDRESS` on a Ray cluster of separate node processes (tests/ray_cluster.py):
a head that only schedules, a worker labelled for latency and a plain CPU worker, each with its own
temp dir, ports, TMPDIR (so its own blob cache) and session, joined with token authentication.

What a cluster does to a sweep: points land on both workers and say where they ran, inputs reach
each node through the object store, latency is measured on the labelled node only; a driver killed
mid-sweep loses nothing that `--resume` does not finish; a worker node lost mid-point has its trial
run again on the other node; and every figure but latency is the in-process run's, exactly. The
cluster is stopped after the module (even when a test fails or the run is interrupted) and no
process of it may be left.

Skipped without Ray. Slow (a cluster and real sweeps): about 4-6 minutes on two loaded cores.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from deploysparse.hashing import sha256_file
from deploysparse.sweep import load_sweep, run_sweep
from deploysparse.sweep.config import RaySettings
from tests.ray_cluster import LocalCluster, die_with_parent, kill_session, wait_until
from tests.test_sweep import SWEEP, write_sweep

REPO = Path(__file__).resolve().parents[1]
SWEEP_CLI = [sys.executable, "-m", "deploysparse", "sweep"]
BENCHMARK = [sys.executable, "benchmarks/sweep_cluster.py"]
LABEL = RaySettings().latency_resource
# Four points of equal cost, two at a time on the two workers.
CLUSTER_SWEEP = SWEEP.replace("flops_target: [0.5, 0.1]", "flops_target: [0.6, 0.5, 0.4, 0.3]")
POINTS = 4
# Every figure of a row that does not depend on timing or placement: the same bytes in, the same out.
EXACT = ("status", "accuracy", "accuracy_original", "accuracy_drop", "top1_agreement", "passed")
EXACT += ("size_bytes", "params", "flops", "flops_ratio", "channels_removed", "model_sha256")
PHASES = {"started", "transfer_s", "point_s", "bench_wait_s", "bench_s", "ended", "published"}
SWEEP_TIMEOUT = 900  # seconds a sweep of four points may take on a loaded machine before the test fails

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray at a time: test_sweep_ray.py


@pytest.fixture(scope="module")
def cluster(one_ray_at_a_time):
    """Head (0 CPU) + `bench` (1 CPU, the latency label) + `cpu` (1 CPU), stopped after the module,
    and then no process of theirs may be alive."""
    local = LocalCluster()
    try:
        with local:
            local.add_worker("bench", cpus=1, resources={LABEL: 1})
            local.add_worker("cpu", cpus=1)
            yield local
        left = local.leftovers()
    finally:
        local.stop()  # again, in case the first stop was interrupted: it only signals what is left
        local.remove_files()
    assert left == [], f"the cluster left processes behind: {left}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The same sweep in-process, uninterrupted: rows by key, and the chosen key under None."""
    folder = tmp_path_factory.mktemp("reference")
    outcome = run_sweep(load_sweep(write_sweep(folder, CLUSTER_SWEEP)), folder / "out")
    assert all(r["status"] == "ok" for r in outcome.rows)
    return {**{r["key"]: r for r in outcome.rows}, None: outcome.best}


def start_sweep(cluster: LocalCluster, out: Path, *extra: str) -> subprocess.Popen:
    """`deploysparse sweep --ray ADDRESS` as a user runs it: its own process (and session), the
    cluster's token in its environment; its output in OUT.log."""
    sweep = write_sweep(out.parent / "sweep", CLUSTER_SWEEP)
    with open(out.parent / f"{out.name}.log", "ab") as log:
        return subprocess.Popen(
            [*SWEEP_CLI, str(sweep), "-o", str(out), "--ray", cluster.address, *extra],
            cwd=REPO,
            env=cluster.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: die_with_parent(signal.SIGKILL),
        )


def finish(process: subprocess.Popen, out: Path) -> str:
    """Wait for the sweep to end; its output. A sweep that hangs is killed (with its session)."""
    try:
        process.wait(timeout=SWEEP_TIMEOUT)
    finally:
        kill_session(process.pid)
    log = (out.parent / f"{out.name}.log").read_text(errors="replace")
    assert process.returncode == 0, log[-4000:]
    return log


def rows_of(out: Path) -> list[dict]:
    """results.jsonl, checked to hold each point once."""
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), f"a point appears twice in results.jsonl: {keys}"
    return rows


def finished_keys(out: Path) -> set[str]:
    points = out / "points"
    if not points.is_dir():
        return set()
    rows = [json.loads(p.read_text()) for p in points.glob("[!.]*/result.json")]
    return {r["key"] for r in rows if r["status"] == "ok"}


def assert_same_results(rows: list[dict], reference: dict[str, dict], out: Path) -> None:
    """Every point of the sweep exactly once, with the in-process figures; the same point chosen."""
    assert sorted(r["key"] for r in rows) == sorted(k for k in reference if k is not None)
    for row in rows:
        expected = reference[row["key"]]
        assert {k: row[k] for k in EXACT} == {k: expected[k] for k in EXACT}, row["key"]
        assert row["p50_ms"] > 0 and row["original_p50_ms"] > 0  # measured; values vary with load
    best = json.loads((out / "best.json").read_text())
    assert best["extra"]["sweep"]["key"] == reference[None]["key"]


def test_points_run_on_both_workers_and_latency_only_on_the_labelled_one(
    cluster: LocalCluster, reference: dict, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    log = finish(start_sweep(cluster, out), out)
    assert f"[{POINTS}/{POINTS}]" in log
    rows = rows_of(out)
    assert_same_results(rows, reference, out)
    bench, cpu, head = cluster.nodes["bench"], cluster.nodes["cpu"], cluster.nodes["head"]
    assert {r["node_id"] for r in rows} == {bench.node_id, cpu.node_id}  # both workers, not the head
    assert {r["bench_node_id"] for r in rows} == {bench.node_id}
    assert all(r["attempts"] == 1 for r in rows)
    for row in rows:
        report = json.loads((out / "points" / row["key"] / "report.json").read_text())
        assert report["extra"]["sweep"]["placement"] == {
            "node": {"id": row["node_id"], "ip": row["node_ip"]},
            "bench_node": {"id": row["bench_node_id"], "ip": row["bench_node_ip"]},
        }
        phases = row["phases"]
        assert set(phases) == PHASES
        assert all(phases[k] >= 0 for k in PHASES)
        assert phases["started"] <= phases["ended"] <= phases["published"]
    # The inputs reached each worker through the object store (no node reads the driver's files):
    # each worker's own cache holds every blob under its sha256, byte for byte the driver's.
    inputs = {p.name: p for p in (out / "inputs").iterdir() if p.is_file()}
    for node in (bench, cpu):
        cache = node.tmpdir / "deploysparse-blobs"
        blobs = {p.name: p for p in cache.iterdir() if not p.name.startswith(".")}
        assert set(blobs) == set(inputs), node.name
        for name, path in blobs.items():
            assert sha256_file(path) == path.name.split(".")[0]
            assert path.read_bytes() == inputs[name].read_bytes()
    assert not (head.tmpdir / "deploysparse-blobs").exists(), "the head ran a point"


def test_driver_killed_mid_sweep_then_resume_runs_only_the_missing_points(
    cluster: LocalCluster, reference: dict, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    driver = start_sweep(cluster, out)
    wait_until(lambda: driver.poll() is not None or finished_keys(out), SWEEP_TIMEOUT, "a first point")
    assert driver.poll() is None, "the sweep ended before it could be interrupted"
    kill_session(driver.pid)  # SIGKILL: no handler runs, no clean-up
    driver.wait()
    done = finished_keys(out)
    assert 1 <= len(done) < POINTS
    before = {r["key"]: r for r in rows_of(out)}  # as the kill left it: still each point at most once

    resumed = time.time()
    log = finish(start_sweep(cluster, out, "--resume"), out)
    assert f"{POINTS} points ({POINTS - len(done)} run now, {len(done)} already done, 0 failed)" in log
    rows = rows_of(out)
    assert_same_results(rows, reference, out)
    for row in rows:
        if row["key"] in done:  # not run again
            assert row["phases"]["published"] < resumed
            if row["key"] in before:  # (a kill between a point's rename and its log line misses it)
                assert row == before[row["key"]]


def test_a_driver_without_the_token_gets_one_line_saying_so(cluster: LocalCluster, tmp_path: Path) -> None:
    """Ray answers a driver without the cluster's token only "Failed to connect"; the sweep adds why."""
    sweep = write_sweep(tmp_path / "sweep", CLUSTER_SWEEP)
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    result = subprocess.run(
        [*SWEEP_CLI, str(sweep), "-o", str(tmp_path / "out"), "--ray", cluster.address],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT,
    )
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and f"--ray {cluster.address}: cannot connect to Ray" in error[0]
    assert "set RAY_AUTH_MODE=token" in error[0]
    assert "Traceback" not in result.stderr


def test_throughput_benchmark_runs_on_a_small_setting(cluster: LocalCluster, tmp_path: Path) -> None:
    result = subprocess.run(
        [*BENCHMARK, "--points", "2", "--address", cluster.address, "--out", str(tmp_path / "bench")],
        cwd=REPO,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout
    assert "| in-process | 2 |" in table and "| cluster | 2 |" in table
    for column in ("points per hour", "transfer", "point", "bench wait", "bench", "outside points"):
        assert column in table


def test_worker_node_lost_mid_point_is_retried_on_the_other_node(
    cluster: LocalCluster, reference: dict, tmp_path: Path
) -> None:
    """Last in the module: the cluster keeps only its bench worker afterwards."""
    out = tmp_path / "out"
    doomed, survivor = cluster.nodes["cpu"], cluster.nodes["bench"]
    # A point's staging folder exists on its node while the point runs. Trials of the driver killed
    # in the test above were killed too and left theirs: only a new one tells of a point of this sweep.
    earlier = set(doomed.tmpdir.glob("deploysparse-point-*"))
    driver = start_sweep(cluster, out)

    def mid_point() -> bool:
        return driver.poll() is not None or bool(set(doomed.tmpdir.glob("deploysparse-point-*")) - earlier)

    wait_until(mid_point, SWEEP_TIMEOUT, "a point to start on the cpu node", every=0.1)
    assert driver.poll() is None, "the sweep ended before a point ran on the cpu node"
    cluster.kill("cpu")
    finish(driver, out)
    rows = rows_of(out)
    assert_same_results(rows, reference, out)
    retried = [r for r in rows if r["attempts"] > 1]
    assert retried, "the point lost with the node was not run again"
    assert all(r["node_id"] == survivor.node_id for r in retried)
    assert {r["bench_node_id"] for r in rows} == {survivor.node_id}
