"""Sweep points as Ray Tune trials: grid or a Tune search algorithm, per-trial resources, retries.

What travels to a worker: the model and data *bytes*, put once into the Ray object store and named
by their sha256 (a worker writes each into its own cache under that hash and checks it), the sweep
settings, and, when fine-tuning, the nn.Module and the user's function (pickled by value when it
comes from the sweep's folder rather than an installed package). No driver path is read on a worker.

Speed (latency and the per-layer profile) is measured by a separate Ray task that asks for one unit
of a custom resource (the sweep's `ray.latency_resource`): only nodes started with that resource
benchmark, one benchmark at a time per node, so every figure of a sweep comes from the same kind of
machine under the same load. The task reserves no CPU (its trial waits idle on it meanwhile); it
gets the original by its object reference and makes the denormal-flushed copy it times beside it.
Each row records the node its point ran on and the node that measured it (`node_id`, `node_ip`,
`bench_node_id`, `bench_node_ip`; in report.json under `extra.sweep.placement`), and where its time
went (`phases`, see phases.py).

A trial that raises a DeploysparseError (bad input: it would fail again) reports a failed row at
once; any other exception is retried by Tune (`FailureConfig(max_failures=ray.max_retries)`) and,
if every attempt fails, recorded as failed with its traceback. Nothing is dropped silently. A
node lost mid-trial is a crash like any other: Tune runs the trial again on a node still alive.
Only the driver writes OUTDIR: finished points land there as they complete (a Tune callback), from
the trial's checkpoint, once per key (ResultStore.publish replaces a key's row, never adds a second),
so an interrupted sweep keeps them and a re-run (`--resume`) skips them by key.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter honours verbose=0
import ray
from ray import tune

from deploysparse.budget import DEAD
from deploysparse.criteria import takes_budget
from deploysparse.errors import DeploysparseError, UsageError
from deploysparse.pipeline.original import OriginalFacts
from deploysparse.pipeline.speed import Speed
from deploysparse.recipe import Recipe
from deploysparse.report import write_report
from deploysparse.sweep.config import BUDGET_KEYS, Range, Sweep
from deploysparse.sweep.inputs import PreparedInputs, sha256_bytes
from deploysparse.sweep.phases import PointClock, published
from deploysparse.sweep.point import PointJob, measure_here, run_point
from deploysparse.sweep.progress import SweepProgress
from deploysparse.sweep.select import score
from deploysparse.sweep.store import ResultStore

CACHE = Path(tempfile.gettempdir()) / "deploysparse-blobs"


@contextlib.contextmanager
def ray_session(address: str, label: str) -> Iterator[None]:
    """Join Ray at `address` ("auto": a running one, else a local one started here and stopped after).

    A Ray already initialised in this process (a notebook, a test) is used as it is and left running.
    """
    quiet = {"log_to_driver": False, "logging_level": "WARNING", "include_dashboard": False}
    if ray.is_initialized():
        yield
        return
    try:
        if address == "auto":
            try:
                ray.init(address="auto", **quiet)
            except ConnectionError:
                # A local Ray on this machine; it is the benchmarking node, so it offers the label.
                ray.init(num_cpus=os.cpu_count(), resources={label: 1}, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as exc:
        hint = ""
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            # Ray >= 2.52 may run a cluster with token authentication, and then refuses a driver that
            # sends none with nothing more than "Failed to connect".
            hint = (
                "; if the cluster authenticates with a token, set RAY_AUTH_MODE=token and give its "
                "token in ~/.ray/auth_token or RAY_AUTH_TOKEN (docs/scale.md)"
            )
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"--ray {address}: cannot connect to Ray ({first_line}){hint}") from exc
    try:
        yield
    finally:
        ray.shutdown()


def _require_label(label: str) -> None:
    if ray.cluster_resources().get(label, 0) < 1:
        raise UsageError(
            f"no Ray node offers the resource {label!r} that latency is measured on; start the "
            f"benchmarking nodes with: ray start ... --resources='{{\"{label}\": 1}}' (docs/scale.md)"
        )


def _this_node() -> dict[str, str]:
    """The Ray node this process runs on: its id and IP address."""
    return {"id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address()}


@ray.remote(num_cpus=0)
def _measure_task(
    recipe_json: dict, original: bytes, artifact: bytes, suffix: str, compact_onnx: bytes
) -> tuple[Speed, dict[str, str], float]:
    """Speed of the original (its flushed copy made here) and the compact model, and the per-layer
    profile when the recipe asks for it, on the node this task landed on; that node; and how long
    the measurement took there."""
    start = time.perf_counter()
    recipe = Recipe.model_validate(recipe_json)
    with tempfile.TemporaryDirectory(prefix="deploysparse-bench-") as tmp:
        original_path, artifact_path = Path(tmp) / "original.onnx", Path(tmp) / f"artifact{suffix}"
        compact_path = Path(tmp) / "compact.onnx"
        original_path.write_bytes(original)
        artifact_path.write_bytes(artifact)
        compact_path.write_bytes(compact_onnx)
        speed = measure_here(recipe, str(original_path), artifact_path, compact_path)
    return speed, _this_node(), time.perf_counter() - start


def _materialise(blobs: dict[str, Any], suffixes: dict[str, str]) -> dict[str, Path]:
    """Each blob in this node's cache, named and checked by its sha256."""
    CACHE.mkdir(parents=True, exist_ok=True)
    paths = {}
    for sha, ref in blobs.items():
        path = CACHE / f"{sha}{suffixes[sha]}"
        if not path.is_file():
            data = ray.get(ref)
            if sha256_bytes(data) != sha:
                raise DeploysparseError(f"blob {sha[:12]} arrived corrupted (sha256 mismatch)")
            fd, tmp = tempfile.mkstemp(dir=CACHE, prefix=f".{sha}.")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        paths[sha] = path
    return paths


def _trial(config: dict, *, sweep: Sweep, inputs: PreparedInputs, blobs: dict, done: dict) -> None:
    """One Tune trial: materialise the blobs, run the point, report its row and its files."""
    from deploysparse.sweep.jobs import failed_row, make_job

    clock = PointClock()
    here = _this_node()
    settings, model_index = _settings_of(config, sweep)
    suffixes = {sha: path.suffix for sha, path in inputs.blobs.items()}
    model = inputs.models[model_index]
    key = make_job(sweep, inputs, model, settings).key  # from hashes alone: no file is read
    if key in done:  # a search drew a point that is already finished: report it, do no work
        tune.report(
            {"row": json.dumps({**done[key], "reused": True}), "score": score(done[key], sweep.select)}
        )
        return
    needed = {model.onnx.sha256, *filter(None, inputs.data_hashes())}
    paths = _materialise({sha: blobs[sha] for sha in needed}, suffixes)
    clock.transfer_s = time.time() - clock.started
    job = make_job(sweep, inputs, model, settings, paths=paths)
    label = sweep.ray.latency_resource
    original_ref = blobs[model.onnx.sha256]
    bench_node: dict[str, str] = {}

    def measure(
        recipe: Recipe, original: str, artifact: Path, compact_onnx: Path, facts: OriginalFacts
    ) -> Speed:
        # The flushed original in `facts` lies on this node: the task makes its own from the bytes.
        task = _measure_task.options(resources={label: 1}, scheduling_strategy="DEFAULT")
        speed, node, seconds = ray.get(
            task.remote(
                recipe.model_dump(mode="json", by_alias=True),
                original_ref,
                artifact.read_bytes(),
                artifact.suffix,
                compact_onnx.read_bytes(),
            )
        )
        bench_node.update(node)
        clock.bench_s = seconds
        return speed

    staging = Path(tempfile.mkdtemp(prefix="deploysparse-point-"))
    try:
        try:
            row = run_point(job, staging, clock.timed(measure))
        except DeploysparseError as exc:  # bad input fails the same way every time: no retry
            row = {**failed_row(job, str(exc)), "node_id": here["id"], "node_ip": here["ip"]}
            tune.report({"row": json.dumps(row), "score": score(row, sweep.select)})
            return
        row = {**row, **_placement(staging, here, bench_node), "phases": clock.phases(row["seconds"])}
        checkpoint = tune.Checkpoint.from_directory(str(staging))
        tune.report({"row": json.dumps(row), "score": score(row, sweep.select)}, checkpoint=checkpoint)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _placement(staging: Path, node: dict[str, str], bench_node: dict[str, str]) -> dict[str, str]:
    """Record in the point's report.json where it ran and where it was measured; the row's fields."""
    report = json.loads((staging / "report.json").read_text(encoding="utf-8"))
    report["extra"]["sweep"]["placement"] = {"node": node, "bench_node": bench_node}
    write_report(report, staging)
    return {
        "node_id": node["id"],
        "node_ip": node["ip"],
        "bench_node_id": bench_node.get("id"),
        "bench_node_ip": bench_node.get("ip"),
    }


def _settings_of(config: dict, sweep: Sweep) -> tuple[dict[str, Any], int]:
    """A trial's config as point settings: the grid's dict as it is, a search's draws in axis order."""
    if "point" in config:
        return dict(config["point"]["settings"]), int(config["point"]["model"])
    settings: dict[str, Any] = {"criterion": config["criterion"]}
    for key in BUDGET_KEYS:
        if key in config and takes_budget(config["criterion"]):
            settings[key] = round(float(config[key]), 4)
    settings.update(precision=config["precision"], backend=config["backend"], batch=int(config["batch"]))
    return settings, int(config["model"])


class _Collect(tune.Callback):
    """On the driver: each finished or finally failed trial goes into the store and gets its line."""

    def __init__(self, sweep: Sweep, inputs: PreparedInputs, store: ResultStore, bar: SweepProgress) -> None:
        self.sweep, self.inputs, self.store, self.bar = sweep, inputs, store, bar
        self.keys: list[str] = []

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config (for Tuner.restore); the live console and store stay here.
        return {"keys": list(self.keys)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.keys = state["keys"]

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = json.loads(trial.last_result["row"])
        self.keys.append(row["key"])
        if row.pop("reused", False):
            self.bar.finished(row)
            return
        staging = None
        if row["status"] == "ok":
            staging = self.store.staging()
            trial.checkpoint.to_directory(str(staging))
            if self.sweep.ray.storage is None:  # a local copy in OUTDIR/tune: keep only Tune's logs
                shutil.rmtree(trial.checkpoint.path, ignore_errors=True)
        row["attempts"] = trial.num_failures + 1
        self.bar.finished(self.store.publish(row["key"], staging, published(row)))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from deploysparse.sweep.jobs import failed_row, make_job

        settings, model_index = _settings_of(trial.config, self.sweep)
        job = make_job(self.sweep, self.inputs, self.inputs.models[model_index], settings)
        trace = Path(trial.error_file).read_text(encoding="utf-8") if trial.error_file else ""
        lines = [line for line in trace.strip().splitlines() if line.strip()]
        row = failed_row(job, lines[-1] if lines else "the trial failed", trace or None)
        row["attempts"] = trial.num_failures
        self.keys.append(job.key)
        self.bar.finished(self.store.publish(job.key, None, row))


def _by_value(inputs: PreparedInputs) -> None:
    """User code from the sweep's folder (not an installed package) travels with the trial, by value."""
    modules = {getattr(inputs.finetune, "__module__", None)}
    modules |= {type(m.module).__module__ for m in inputs.models if m.module is not None}
    for name in filter(None, modules):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None) or ""
        if module is not None and "site-packages" not in path and not name.startswith("deploysparse"):
            ray.cloudpickle.register_pickle_by_value(module)


def _fit(
    sweep: Sweep,
    inputs: PreparedInputs,
    store: ResultStore,
    param_space: dict,
    tune_config: tune.TuneConfig,
    callback: _Collect,
    done: dict,
) -> None:
    """Run the trials. Tune logs every trial's results under OUTDIR/tune/NAME (or `ray.storage`);
    the points' files reach OUTDIR/points through the callback."""
    _require_label(sweep.ray.latency_resource)
    _by_value(inputs)
    blobs = {sha: ray.put(path.read_bytes()) for sha, path in inputs.blobs.items()}
    trainable = tune.with_parameters(_trial, sweep=sweep, inputs=inputs, blobs=blobs, done=done)
    resources = {"cpu": sweep.ray.cpus_per_point, **sweep.ray.resources_per_point}
    storage = sweep.ray.storage or str((store.outdir / "tune").resolve())
    name = f"{sweep.name or 'sweep'}-{os.getpid()}"
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=param_space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            verbose=0,
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=sweep.ray.max_retries),
        ),
    )
    tuner.fit()


def run_on_ray(
    sweep: Sweep,
    inputs: PreparedInputs,
    jobs: list[PointJob],
    store: ResultStore,
    bar: SweepProgress,
    address: str,
) -> None:
    """Run the grid points `jobs` as Tune trials; each lands in `store` as it finishes."""
    if not jobs:
        return
    index = {str(m.onnx.path): i for i, m in enumerate(inputs.models)}
    points = [{"key": job.key, "model": index[job.source], "settings": job.settings} for job in jobs]
    with ray_session(address, sweep.ray.latency_resource):
        callback = _Collect(sweep, inputs, store, bar)
        tune_config = tune.TuneConfig(
            max_concurrent_trials=sweep.ray.max_concurrent,
            trial_dirname_creator=lambda trial: trial.trial_id,
        )
        _fit(sweep, inputs, store, {"point": tune.grid_search(points)}, tune_config, callback, {})


def search_on_ray(
    sweep: Sweep, inputs: PreparedInputs, store: ResultStore, bar: SweepProgress, address: str
) -> list[str]:
    """Let a Tune search algorithm draw `search.samples` points per model; return their keys."""
    space = _search_space(sweep, inputs)
    with ray_session(address, sweep.ray.latency_resource):
        done = {}
        # Points a previous run finished are reported from the store without running again.
        for path in store.points.glob("*/result.json") if store.points.is_dir() else []:
            row = json.loads(path.read_text(encoding="utf-8"))
            if row.get("status") == "ok":
                done[row["key"]] = row
        callback = _Collect(sweep, inputs, store, bar)
        tune_config = tune.TuneConfig(
            metric="score",
            mode="max",
            num_samples=sweep.search.samples * len(inputs.models),
            search_alg=_search_algorithm(sweep),
            max_concurrent_trials=sweep.ray.max_concurrent,
            trial_dirname_creator=lambda trial: trial.trial_id,
        )
        _fit(sweep, inputs, store, space, tune_config, callback, done)
    return callback.keys


def _search_space(sweep: Sweep, inputs: PreparedInputs) -> dict[str, Any]:
    base = sweep.base_recipe
    axes = sweep.axes
    space: dict[str, Any] = {
        "model": tune.choice(list(range(len(inputs.models)))),
        "criterion": tune.choice(axes.criterion or base.prune.ranking[:1] or [DEAD]),
        "precision": tune.choice(axes.precision or [base.build.precision]),
        "backend": tune.choice(axes.backend or [base.build.backend]),
        "batch": tune.choice(axes.batch or [base.bench.batches[0]]),
    }
    budget = next((k for k in BUDGET_KEYS if getattr(axes, k) is not None), None)
    if budget is None:
        budget = next((k for k in BUDGET_KEYS if getattr(base.prune, k) is not None), None)
        values: Any = [getattr(base.prune, budget)] if budget else None
    else:
        values = getattr(axes, budget)
    if budget is not None:
        space[budget] = (
            tune.quniform(values.min, values.max, 0.01) if isinstance(values, Range) else tune.choice(values)
        )
    return space


def _search_algorithm(sweep: Sweep) -> Any:
    """The Tune search algorithm the sweep names (`random`: Tune's seeded random sampler)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=sweep.search.seed)
