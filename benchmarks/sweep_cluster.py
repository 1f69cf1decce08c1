"""Points per hour of a sweep on the bundled digits CNN, in-process vs. a 2-node Ray cluster, and where
the time goes (scheduling, object transfer, the points themselves).

    PYTHONPATH=. python benchmarks/sweep_cluster.py [--points 48] [--worker-cpus 1]
        [--address HOST:PORT] [--out /tmp/sweep-cluster]

The sweep is examples/sweep-digits.yaml (its recipe: ONNX Runtime fp32, the benchmark at 3 x 50
iterations) over `--points` points: `l1` and `bn-scale` x evenly spaced FLOPs targets from 0.9 to
0.1 (one criterion when the count is odd). It runs twice, each time as `deploysparse sweep` in a
process of its own into an empty folder: in-process, then with `--ray` on a cluster. Without
`--address` the cluster is started here as separate node processes (tests/ray_cluster.py): a head
that only schedules and two workers of `--worker-cpus` CPUs each, one of them carrying the
`deploysparse-bench` label and so measuring every point's latency. With `--address` it joins a
running cluster (its token in the environment: RAY_AUTH_MODE=token and ~/.ray/auth_token or
RAY_AUTH_TOKEN).

Per mode: wall time of the command; points per hour over it and over the points' own span (first
point started to last published: without Python start-up, input export and Ray's connection); the
mean per point of each phase the rows record (deploysparse/sweep/phases.py): `transfer` (inputs
from the object store into the node's cache), `point` (prune, build, validate, report), `bench wait`
(the benchmarking node busy with another point, the task scheduled, the models shipped), `bench`
(the measurement), `return` (the point's files back into OUTDIR: Tune's checkpoint, then the
driver's copy), and `outside points`: the slot time within that span in which no point ran (Tune
scheduling trials and starting their actors, slots idle at the end), per point. `slots` is the most
points seen running at once.

Run on a quiet machine: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("transfer_s", "point_s", "bench_wait_s", "bench_s")


def sweep_file(folder: Path, points: int) -> Path:
    """examples/sweep-digits.yaml over `points` points; the select rule keeps no latency limit."""
    data = yaml.safe_load((ROOT / "examples" / "sweep-digits.yaml").read_text())
    criteria = ["l1", "bn-scale"] if points % 2 == 0 else ["l1"]
    count = points // len(criteria)
    targets = [round(0.9 - 0.8 * i / max(count - 1, 1), 3) for i in range(count)]
    data["name"] = f"cluster-{points}"
    data["axes"].update(criterion=criteria, flops_target=targets)
    data["select"] = {"goal": "max_accuracy"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sweep-{points}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(sweep: Path, out: Path, env: dict[str, str] | None, address: str | None) -> tuple[float, float]:
    """One `deploysparse sweep` into an empty OUT: (start time, wall seconds)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "deploysparse", "sweep", str(sweep), "-o", str(out)]
    command += ["--ray", address] if address else []
    start = time.time()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return start, wall


def breakdown(mode: str, out: Path, start: float, wall: float) -> str:
    """One table row: throughput and the mean phases per point, from results.jsonl."""
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"{mode}: {len(failed)} points failed: {failed[0]['error']}")
    phases = [r["phases"] for r in rows]
    n = len(rows)
    first, last = min(p["started"] for p in phases), max(p["published"] for p in phases)
    span = last - first
    spans = [(p["started"], p["published"]) for p in phases]
    slots = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    busy = sum(e - s for s, e in spans)
    means = [sum(p[k] for p in phases) / n for k in PHASES]
    returned = sum(p["published"] - p["ended"] for p in phases) / n
    outside = (slots * span - busy) / n
    cells = [
        mode,
        str(n),
        str(slots),
        f"{wall:.1f}",
        f"{n / wall * 3600:.0f}",
        f"{n / span * 3600:.0f}" if span > 0 else "n/a",
        f"{first - start:.1f}",
        *(f"{m:.2f}" for m in means),
        f"{returned:.2f}",
        f"{outside:.2f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=48)
    parser.add_argument("--worker-cpus", type=int, default=1, help="CPUs of each worker node started here")
    parser.add_argument("--address", help="join this running cluster instead of starting one")
    parser.add_argument("--out", type=Path, default=Path("/tmp/sweep-cluster"))
    args = parser.parse_args()
    if args.points < 1:
        parser.error("--points must be at least 1")
    sweep = sweep_file(args.out, args.points)
    lines = [
        "| mode | points | slots | wall s | points per hour | points per hour, points' span "
        "| before first point s | transfer | point | bench wait | bench | return | outside points |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    start, wall = run(sweep, args.out / "in-process", None, None)
    lines.append(breakdown("in-process", args.out / "in-process", start, wall))
    if args.address:
        start, wall = run(sweep, args.out / "cluster", None, args.address)
    else:
        sys.path.insert(0, str(ROOT))
        from deploysparse.sweep.config import RaySettings
        from tests.ray_cluster import LocalCluster

        cluster = LocalCluster()
        try:
            with cluster:
                label = RaySettings().latency_resource
                cluster.add_worker("bench", cpus=args.worker_cpus, resources={label: 1})
                cluster.add_worker("cpu", cpus=args.worker_cpus)
                start, wall = run(sweep, args.out / "cluster", cluster.env, cluster.address)
        finally:
            cluster.remove_files()
    lines.append(breakdown("cluster", args.out / "cluster", start, wall))
    print("\n".join(lines))
    print("\nper-point columns from `transfer` on: mean seconds per point (see the docstring)")


if __name__ == "__main__":
    main()
