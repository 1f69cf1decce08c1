"""The prune CLI's fixed cost: what `deploysparse prune` imports. A prune needs onnx, numpy, ONNX
Runtime (the output check) and click; torch (seconds), Ray, pydantic and PyYAML (recipes), scipy
(PFP's root finder, similarity's clustering) and rich (what a person reads) are for other commands,
criteria or modes, and each import costs every run 0.05-3 s. Each case runs in a fresh interpreter,
so modules an earlier test loaded cannot hide an import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.criteria_helpers import chain_model

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # four fresh interpreters, 3-5 s each
NEVER = ("torch", "ray", "pydantic", "yaml", "sklearn", "scipy")

PROBE = """
import json, sys
from deploysparse.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})), file=sys.stderr)
"""


def loaded_by(*args: object) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("imports") / "chain.onnx"
    onnx.save(chain_model(np.random.default_rng(0)), path)
    return path


def test_prune_help_imports_no_heavy_package() -> None:
    loaded = loaded_by("prune", "--help")  # its --criterion choices come from the registry: onnx, no more
    assert not loaded & {*NEVER, "onnxruntime", "rich"}, sorted(loaded & {*NEVER, "onnxruntime", "rich"})


@pytest.mark.parametrize("criterion", ["dead", "l1"])
def test_prune_json_imports_what_it_uses(model: Path, tmp_path: Path, criterion: str) -> None:
    budget = ["--ratio", "0.3"] if criterion != "dead" else []
    loaded = loaded_by(
        "prune", model, "--criterion", criterion, *budget, "-o", tmp_path / "out.onnx", "--json"
    )
    assert {"onnx", "numpy", "click"} <= loaded
    # the output check runs the compact model beside the original, unless the result is exact
    assert ("onnxruntime" in loaded) == (criterion != "dead")
    assert not loaded & {*NEVER, "rich"}, sorted(loaded & {*NEVER, "rich"})


def test_prune_for_a_person_adds_rich_only(model: Path, tmp_path: Path) -> None:
    loaded = loaded_by("prune", model, "--criterion", "l1", "--ratio", "0.3", "-o", tmp_path / "out.onnx")
    assert "rich" in loaded and not loaded & set(NEVER), sorted(loaded & set(NEVER))
