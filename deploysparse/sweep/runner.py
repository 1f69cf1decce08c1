"""`deploysparse sweep`: plan the points, run those not yet finished (here or on Ray), write the outputs.

Outputs in OUTDIR: `points/<key>/` (each point's report.json, report.html, compact.onnx, plan.json,
build/), `results.jsonl`, `results.csv`, `best.json` (the chosen point's report, a valid baseline for
`deploysparse check`), `sweep.html`, and `inputs/` (the models and data by content hash).
"""

from __future__ import annotations

import json
import os
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploysparse.atomic import write_text
from deploysparse.errors import DeploysparseError, UsageError
from deploysparse.output_guard import Item, reads, refuse_overlap, writes
from deploysparse.sweep.config import Sweep, grid_settings
from deploysparse.sweep.html import write_sweep_html
from deploysparse.sweep.inputs import prepare_inputs
from deploysparse.sweep.jobs import failed_row, make_job
from deploysparse.sweep.phases import PointClock, published
from deploysparse.sweep.point import PointJob, measure_here, run_point
from deploysparse.sweep.progress import SweepProgress
from deploysparse.sweep.select import choose, violations
from deploysparse.sweep.store import ResultStore


@dataclass
class SweepOutcome:
    """What a sweep produced: every row in sweep order, the chosen one, and how many ran now."""

    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    ran: int
    skipped: int
    outdir: Path
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("status") != "ok"]


def run_sweep(
    sweep: Sweep, outdir: str | os.PathLike[str], *, ray_address: str | None = None, resume: bool = False
) -> SweepOutcome:
    """Run every point of `sweep` not already finished in `outdir`; write results, best.json, sweep.html."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"-o {outdir}: is a file; the sweep writes a folder")
    if resume and not (outdir / "sweep.json").is_file():
        raise UsageError(
            f"--resume: {outdir} holds no sweep to resume (no sweep.json); drop --resume to start one"
        )
    if sweep.search.algorithm != "grid" and ray_address is None:
        raise UsageError(
            f"search: {sweep.search.algorithm} runs on Ray Tune; add --ray auto (or --ray ADDRESS)"
        )
    if ray_address is not None:
        _ray_runner()  # Ray missing: say so before any export
    refuse_overlap(writes("-o", outdir, "folder"), _files_read(sweep))
    outdir.mkdir(parents=True, exist_ok=True)
    store = ResultStore(outdir)
    store.clean_staging()
    inputs = prepare_inputs(sweep, outdir / "inputs")
    _write_sweep_json(sweep, outdir)

    if sweep.search.algorithm == "grid":
        jobs = [make_job(sweep, inputs, m, s) for m in inputs.models for s in grid_settings(sweep)]
        pending = [job for job in jobs if not store.finished(job.key)]
        with SweepProgress(len(jobs), done=len(jobs) - len(pending)) as bar:
            if ray_address is None:
                _run_here(pending, store, bar)
            else:
                run_on_ray = _ray_runner().run_on_ray
                run_on_ray(sweep, inputs, pending, store, bar, ray_address)
        keys = [job.key for job in jobs]
    else:
        search_on_ray = _ray_runner().search_on_ray
        with SweepProgress(sweep.search.samples * len(inputs.models), done=0) as bar:
            keys = search_on_ray(sweep, inputs, store, bar, ray_address or "auto")
        pending = keys
    return finish(sweep, store, keys, ran=len(pending), skipped=len(keys) - len(pending))


def _ray_runner():
    try:
        from deploysparse.sweep import ray_runner
    except ImportError as exc:
        raise UsageError(f"--ray needs Ray Tune: pip install 'deploysparse[scale]' ({exc})") from exc
    return ray_runner


def _run_here(jobs: list[PointJob], store: ResultStore, bar: SweepProgress) -> None:
    for job in jobs:
        staging = store.staging()
        clock = PointClock()
        try:
            row = run_point(job, staging, clock.timed(measure_here))
            row = {**row, "phases": clock.phases(row["seconds"])}
        except DeploysparseError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            row = failed_row(job, str(exc))
            staging = None
        except Exception as exc:  # a bug (ours or the user's function): record it, keep the other points
            shutil.rmtree(staging, ignore_errors=True)
            row = failed_row(job, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            staging = None
        bar.finished(store.publish(job.key, staging, published({**row, "attempts": 1})))


def finish(sweep: Sweep, store: ResultStore, keys: list[str], ran: int, skipped: int) -> SweepOutcome:
    """results.jsonl/csv over this sweep's points, best.json for the chosen one, sweep.html."""
    rows = [row for key in dict.fromkeys(keys) if (row := store.row(key)) is not None]
    store.write_tables(rows)
    best = choose(rows, sweep.select)
    best_path = store.outdir / "best.json"
    notes = []
    if best is None:
        best_path.unlink(missing_ok=True)  # a stale best.json from an earlier sweep would mislead CI
        reasons = {r["key"]: "; ".join(violations(r, sweep.select)) for r in rows}
        notes.append("no point meets the selection rule: " + "; ".join(sorted(set(reasons.values()))))
    else:
        report = json.loads((store.points / best["key"] / "report.json").read_text(encoding="utf-8"))
        report["extra"]["sweep"]["select"] = sweep.select.model_dump(mode="json")
        write_text(best_path, json.dumps(report, indent=1) + "\n")
    write_sweep_html(sweep, rows, best, store.outdir / "sweep.html")
    return SweepOutcome(rows, best, ran, skipped, store.outdir, notes)


def _write_sweep_json(sweep: Sweep, outdir: Path) -> None:
    data = {
        "name": sweep.name,
        "source": str(sweep.source) if sweep.source else None,
        "sweep": sweep.model_dump(mode="json"),
        "base_recipe": sweep.base_recipe.to_report(),
    }
    write_text(outdir / "sweep.json", json.dumps(data, indent=1) + "\n")


def _files_read(sweep: Sweep) -> list[Item]:
    """Every user file the sweep reads (the sweep file, model files with their data, weights, data):
    none may lie in the output folder, which the sweep writes into."""
    items = reads("the sweep file", sweep.source)
    for entry in sweep.models:
        model, weights = (entry, None) if isinstance(entry, str) else (entry.model, entry.weights)
        if not sweep.is_entry_point(model):
            items += reads("a sweep model", sweep.resolve(model), "model")
        items += reads("its weights", sweep.resolve(weights))
    for key in ("calib", "val", "labels"):
        text = getattr(sweep.data, key)
        if text is not None and not sweep.is_entry_point(text):
            items += reads(f"data.{key}", sweep.resolve(text))
    return items
