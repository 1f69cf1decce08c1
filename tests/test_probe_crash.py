"""Crash consistency: `prune` (inline and external-data models) and `run` killed at every point
where they move a file into place; afterwards the output is the old one or the new one, never a mix.

A child process runs the command with os.replace, os.rename and the folder exchange wrapped: at the
k-th such call it dies with os._exit (no cleanup, no finally: what SIGKILL does), either just before
the call or just after it. k = 0 runs to the end and reports how many calls there were, so every
point is visited and the test cannot miss a new rename added later.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from tests.archs.onnxgraphs import dead_convnet
from tests.probing import FAST_RECIPE, Workspace, make_workspace, snapshot

CHILD = """
import os, sys
k, when = int(sys.argv[1]), sys.argv[2]
import deploysparse.atomic as atomic
calls = [0]
def hooked(fn):
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k and when == "before":
            os._exit(137)
        result = fn(*args, **kwargs)
        if calls[0] == k and when == "after":
            os._exit(137)
        return result
    return wrapper
os.replace, os.rename = hooked(os.replace), hooked(os.rename)
atomic._exchange = hooked(atomic._exchange)
from deploysparse.cli import main
try:
    main(sys.argv[3:])
finally:
    sys.stderr.write(f"\\nCALLS {calls[0]}\\n")
"""


def _child(k: int, when: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(k), when, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _count_calls(*args) -> int:
    proc = _child(0, "none", *args)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.strip().splitlines()[-1].split()[1])


def _content(path: Path) -> str:
    """What a reader gets from a model file: the graph with its weights, external data loaded."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    return hashlib.sha256(model.SerializeToString()).hexdigest()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


def _save_model(model, path: Path, external: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save(
            model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0
        )
    else:
        onnx.save(model, str(path))


def _restore(folder: Path, saved: dict[str, bytes]) -> None:
    """Put the old output back exactly (and nothing else) before the next kill."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, data in saved.items():
        (folder / name).write_bytes(data)


EXTERNAL_DATA_PENDING = pytest.mark.xfail(
    reason="modelio.save_model renames the data and the model one after the other (main fixes it)",
    strict=False,
)


@pytest.mark.parametrize("source", ["inline", pytest.param("external data", marks=pytest.mark.slow)])
def test_prune_killed_anywhere_leaves_the_old_or_the_new_model(ws: Workspace, source: str) -> None:
    external = source == "external data"
    model = ws.ext_model if external else ws.model
    out = ws.root / "out" / "compact.onnx"
    new_args = ["prune", model, "-o", out]
    # the old output: another model's compact, in the same storage form as the new one
    wider = ws.root / "wider" / "model.onnx"
    _save_model(dead_convnet(width=16), wider, external)
    assert _child(0, "none", "prune", wider, "-o", out).returncode == 0
    assert (out.with_name("compact.onnx.data")).exists() == external
    saved = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    old = _content(out)
    reference = ws.root / "reference" / "compact.onnx"
    assert _child(0, "none", *new_args[:2], "-o", reference).returncode == 0
    new = _content(reference)
    assert old != new
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    expected_new = ort.InferenceSession(str(reference)).run(None, {"input": x})[0]

    calls = _count_calls(*new_args)
    _restore(out.parent, saved)
    inputs = {path: path.read_bytes() for path in (model, ws.ext_data, ws.calib)}
    for k in range(1, calls + 1):
        for when in ("before", "after"):
            _restore(out.parent, saved)
            proc = _child(k, when, *new_args)
            assert proc.returncode == 137, proc.stderr
            got = _content(out)
            assert got in (old, new), f"kill {when} call {k}: the output is neither the old nor the new model"
            if got == new:
                actual = ort.InferenceSession(str(out)).run(None, {"input": x})[0]
                np.testing.assert_allclose(actual, expected_new, rtol=1e-6, atol=1e-6)
            assert all(path.read_bytes() == data for path, data in inputs.items())


def _run_args(ws: Workspace, recipe: Path, out: Path) -> list:
    return ["run", recipe, "--model", ws.model, "--calib", ws.calib, "-o", out, "--json"]


def _published_state(out: Path) -> tuple[str, dict[str, str]]:
    """('old'|'new' by the criterion recorded, files) after checking the report matches the files."""
    report = json.loads((out / "report.json").read_text())
    for name, digest in report["artifacts"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, (
            f"{name} is not the file reported"
        )
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert files == {*report["artifacts"], "report.json", "report.html"}, files
    return report["pruning"]["criterion"], snapshot(out)


def _kill_run_at(ws: Workspace, points: list[tuple[int, str]] | None) -> None:
    new_recipe = ws.root / "new.yaml"
    new_recipe.write_text(
        yaml.safe_dump(
            {
                **FAST_RECIPE,
                "prune": {"criterion": ["dead", "l1"], "ratio": 0.3, "round_to": 1},
                "validate": dict.fromkeys(
                    ("atol", "rtol", "min_cosine", "min_top1_agreement", "max_accuracy_drop")
                ),
            }
        )
    )
    out = ws.root / "out"
    old_args, new_args = _run_args(ws, ws.recipe, out), _run_args(ws, new_recipe, out)
    assert _child(0, "none", *old_args).returncode == 0
    old_criterion, old_files = _published_state(out)
    assert old_criterion == "dead"
    saved = ws.root / "saved-out"
    shutil.copytree(out, saved)
    calls = _count_calls(*new_args)
    if points is None:
        points = [(k, when) for k in range(1, calls + 1) for when in ("before", "after")]
    else:  # the publishing step: the last call of the run, with its neighbour
        points = [(calls + k if k <= 0 else k, when) for k, when in points]
    for k, when in points:
        shutil.rmtree(out)
        shutil.copytree(saved, out)
        proc = _child(k, when, *new_args)
        assert proc.returncode == 137, proc.stderr
        criterion, files = _published_state(out)
        if criterion == "dead":
            assert _relative(files, out) == _relative(old_files, out), (
                f"kill {when} call {k}: the old folder changed"
            )
        else:
            assert criterion == "dead+l1", criterion


def _relative(files: dict[str, str], root: Path) -> dict[str, str]:
    return {str(Path(p).relative_to(root)): d for p, d in files.items()}


@pytest.mark.slow
def test_run_killed_while_publishing_leaves_the_old_or_the_new_folder(ws: Workspace) -> None:
    _kill_run_at(ws, [(0, "before"), (0, "after"), (-1, "after")])


@pytest.mark.slow
def test_run_killed_anywhere_leaves_the_old_or_the_new_folder(ws: Workspace) -> None:
    _kill_run_at(ws, None)
