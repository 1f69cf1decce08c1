"""Helpers of the probe suite (tests/test_probe_*.py): a workspace of a user's files, a snapshot of
every file in it, and the verdicts a probe may reach.

Every probe runs one command the way a hostile but ordinary user would, then checks two things:
the verdict (a one-line `error:` and exit 2, or a correct result), and that no file that existed
before the command was modified or removed (hashes before and after).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import yaml

from tests.archs.onnxgraphs import dead_convnet
from tests.report_factory import make_report


@dataclass
class Workspace:
    """A user's folder: models (inline and external data), data, a plan, reports and a recipe."""

    root: Path
    model: Path  # inline weights, 4 dead channels, input (N, 3, 8, 8)
    ext_model: Path  # the same model with its weights in ext/model.onnx.data
    calib: Path  # (8, 3, 8, 8) float32, standard normal
    labels: Path  # (8,) int64
    plan: Path  # the dead plan of `model`
    report: Path
    baseline: Path
    recipe: Path  # the CPU recipe with a one-iteration benchmark

    @property
    def ext_data(self) -> Path:
        return self.ext_model.with_name("model.onnx.data")


def make_workspace(root: Path) -> Workspace:
    from deploysparse import api

    root.mkdir(parents=True, exist_ok=True)
    model = root / "model.onnx"
    onnx.save(dead_convnet(), str(model))
    (root / "ext").mkdir()
    ext_model = root / "ext" / "model.onnx"
    onnx.save(
        dead_convnet(),
        str(ext_model),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    rng = np.random.default_rng(0)
    calib = root / "calib.npy"
    np.save(calib, rng.standard_normal((8, 3, 8, 8)).astype(np.float32))
    labels = root / "labels.npy"
    np.save(labels, rng.integers(0, 4, size=8).astype(np.int64))
    result = api.prune(model, criterion="dead", round_to=1)
    plan = root / "plan.json"
    result.plan.save(plan, result.graph)
    report = root / "report.json"
    report.write_text(json.dumps(make_report(), indent=1))
    baseline = root / "baseline.json"
    baseline.write_text(json.dumps(make_report(), indent=1))
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(FAST_RECIPE))
    return Workspace(root, model, ext_model, calib, labels, plan, report, baseline, recipe)


FAST_RECIPE = {
    "name": "probe",
    "prune": {"criterion": ["dead"], "round_to": 1},
    "bench": {"batches": [1], "warmup": 0, "iters": 2, "repeats": 1},
}


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (symlinks by target name)."""
    digests = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            digests[str(path)] = "link:" + str(path.readlink())
        elif path.is_file():
            digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def assert_untouched(before: dict[str, str], root: Path) -> None:
    """Every file that existed before still exists with the same bytes."""
    after = snapshot(root)
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    assert not changed, f"input files modified or removed: {changed}"


def assert_bad_input(result, *culprits: str) -> None:
    """Exit code 2 and exactly one stderr line `error: ...` naming every culprit, no traceback."""
    assert result.code == 2, f"exit code {result.code}; stderr: {result.err}; stdout: {result.out[-500:]}"
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.err}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.err + result.out
    for culprit in culprits:
        assert culprit in lines[0], f"{culprit!r} not named in: {lines[0]}"


def assert_ok(result) -> None:
    assert result.code == 0, f"exit code {result.code}; stderr: {result.err}"
    assert "Traceback" not in result.err + result.out
    assert "\x1b[" not in result.err, f"escape codes (ONNX Runtime log lines?) on stderr: {result.err!r}"
