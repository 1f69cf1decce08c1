"""Probes: outputs that alias inputs. Every command compares each output path (and the external
data file a model output may bring) with each input (and the external data it reads), by resolved
path and inode, and refuses before writing anything; no input file changes, whatever the spelling.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.probing import Workspace, assert_bad_input, assert_ok, assert_untouched, make_workspace, snapshot


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


def _symlink(ws: Workspace) -> Path:
    link = ws.root / "link.onnx"
    link.symlink_to(ws.model)
    return link


def _hardlink(ws: Workspace) -> Path:
    link = ws.root / "hard.onnx"
    os.link(ws.model, link)
    return link


def _upper(ws: Workspace) -> Path:
    upper = ws.root / "MODEL.ONNX"
    shutil.copyfile(ws.model, upper)
    return upper


# id -> (argv from the workspace, words the error line must hold)
REFUSED: dict[str, tuple[Callable[[Workspace], list], tuple[str, ...]]] = {
    "prune -o is the model": (lambda w: ["prune", w.model, "-o", w.model], ("-o",)),
    "prune -o is the model via ..": (
        lambda w: ["prune", w.model, "-o", w.root / "ext" / ".." / "model.onnx"],
        ("-o",),
    ),
    "prune -o is a symlink to the model": (lambda w: ["prune", w.model, "-o", _symlink(w)], ("-o",)),
    "prune -o is a hard link to the model": (lambda w: ["prune", w.model, "-o", _hardlink(w)], ("-o",)),
    "prune -o upper-case .ONNX is the model": (
        lambda w: ["prune", p := _upper(w), "-o", p],
        ("MODEL.ONNX",),
    ),
    "prune -o is the model's external data": (
        lambda w: ["prune", w.ext_model, "-o", w.ext_data],
        ("external data",),
    ),
    "prune -o whose .data would be the model's data": (
        lambda w: ["prune", w.ext_model, "-o", w.ext_model],
        ("-o",),
    ),
    "prune -o is the calibration file": (
        lambda w: ["prune", w.model, "--calib", w.calib, "-o", w.calib],
        ("--calib",),
    ),
    "prune -o is the plan": (lambda w: ["prune", w.model, "--plan", w.plan, "-o", w.plan], ("--plan",)),
    "prune --plan-out is the calibration file": (
        lambda w: ["prune", w.model, "--calib", w.calib, "-o", w.root / "c.onnx", "--plan-out", w.calib],
        ("--plan-out", "--calib"),
    ),
    "prune --plan-out is the model": (
        lambda w: ["prune", w.model, "-o", w.root / "c.onnx", "--plan-out", w.model],
        ("--plan-out",),
    ),
    "prune --plan-out is the plan read": (
        lambda w: ["prune", w.model, "--plan", w.plan, "-o", w.root / "c.onnx", "--plan-out", w.plan],
        ("--plan-out",),
    ),
    "prune --plan-out is -o": (
        lambda w: ["prune", w.model, "-o", w.root / "c.onnx", "--plan-out", w.root / "c.onnx"],
        ("--plan-out",),
    ),
    "prune --plan-out is the external data": (
        lambda w: ["prune", w.ext_model, "-o", w.root / "c.onnx", "--plan-out", w.ext_data],
        ("--plan-out",),
    ),
    "prune -o is an existing folder": (lambda w: ["prune", w.model, "-o", w.root / "ext"], ("is a folder",)),
    "prune -o below a regular file": (
        lambda w: ["prune", w.model, "-o", w.calib / "c.onnx"],
        ("not a folder",),
    ),
    "build -o holds the model as model.optimized.onnx": (
        lambda w: ["build", _as(w, "out/model.optimized.onnx"), "-o", w.root / "out"],
        ("-o",),
    ),
    "build fp16 -o holds the model as model.fp16.onnx": (
        lambda w: ["build", _as(w, "out/model.fp16.onnx"), "--precision", "fp16", "-o", w.root / "out"],
        ("-o",),
    ),
    "build int8 -o holds the calibration data": (
        lambda w: [
            "build",
            w.model,
            "--precision",
            "int8",
            "--calib",
            _as(w, "out/model.int8.onnx", w.calib),
            "-o",
            w.root / "out",
        ],
        ("--calib",),
    ),
    "build -o is a regular file": (lambda w: ["build", w.model, "-o", w.calib], ("not a folder",)),
    "run -o holds --model": (
        lambda w: ["run", w.recipe, "--model", w.model, "--calib", w.calib, "-o", w.root],
        ("--model",),
    ),
    "run -o holds --calib": (
        lambda w: [
            "run",
            w.recipe,
            "--model",
            w.model,
            "--calib",
            _as(w, "o/c.npy", w.calib),
            "-o",
            w.root / "o",
        ],
        ("--calib",),
    ),
    "run -o holds the recipe": (
        lambda w: [
            "run",
            _as(w, "o/r.yaml", w.recipe),
            "--model",
            w.model,
            "--calib",
            w.calib,
            "-o",
            w.root / "o",
        ],
        ("recipe",),
    ),
    "run -o is the model's folder for external data": (
        lambda w: ["run", w.recipe, "--model", w.ext_model, "--calib", w.calib, "-o", w.root / "ext"],
        ("--model",),
    ),
    "run -o is an existing file": (
        lambda w: ["run", w.recipe, "--model", w.model, "--calib", w.calib, "-o", w.labels],
        ("not a folder",),
    ),
    "run -o is a folder of other files": (
        lambda w: ["run", w.recipe, "--model", w.model, "--calib", w.calib, "-o", _folder_of_notes(w)],
        ("report.json",),
    ),
    "check --junit is the report": (
        lambda w: ["check", w.report, "--baseline", w.baseline, "--junit", w.report],
        ("--junit",),
    ),
    "check --junit is the baseline": (
        lambda w: ["check", w.report, "--baseline", w.baseline, "--junit", w.baseline],
        ("--junit",),
    ),
    "check --markdown is the report": (
        lambda w: ["check", w.report, "--baseline", w.baseline, "--markdown", w.report],
        ("--markdown",),
    ),
    "check --markdown is the baseline": (
        lambda w: ["check", w.report, "--baseline", w.baseline, "--markdown", w.baseline],
        ("--markdown",),
    ),
    "check --junit is --markdown": (
        lambda w: [
            "check",
            w.report,
            "--baseline",
            w.baseline,
            "--junit",
            m := w.root / "x",
            "--markdown",
            m,
        ],
        ("--junit", "--markdown"),
    ),
    "check --update-baseline with the report as baseline": (
        lambda w: ["check", w.report, "--baseline", w.report, "--update-baseline"],
        ("--baseline",),
    ),
    "advise-depth --drop-blocks is the model": (
        lambda w: ["advise-depth", "--data", w.calib, "--model", w.model, "--drop-blocks", w.model],
        ("--drop-blocks",),
    ),
    "advise-depth --drop-blocks is the data": (
        lambda w: ["advise-depth", "--data", w.calib, "--model", w.model, "--drop-blocks", w.calib],
        ("--drop-blocks",),
    ),
    "advise-depth --drop-blocks is the external data": (
        lambda w: ["advise-depth", "--data", w.calib, "--model", w.ext_model, "--drop-blocks", w.ext_data],
        ("--drop-blocks",),
    ),
    "demo -o is a folder of other files": (lambda w: ["demo", "-o", _folder_of_notes(w)], ("report.json",)),
}


def _as(ws: Workspace, relative: str, source: Path | None = None) -> Path:
    """A copy of the model (or `source`) at `relative` inside the workspace."""
    target = ws.root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source or ws.model, target)
    return target


def _folder_of_notes(ws: Workspace) -> Path:
    folder = ws.root / "notes"
    folder.mkdir(exist_ok=True)
    (folder / "todo.txt").write_text("my own notes\n")
    return folder


@pytest.mark.parametrize("case", list(REFUSED))
def test_output_that_aliases_an_input_is_refused(cli, ws: Workspace, case: str) -> None:
    build_args, culprits = REFUSED[case]
    args = build_args(ws)
    before = snapshot(ws.root)
    names_before = set(os.listdir(ws.root))
    assert_bad_input(cli(*args), *culprits)
    assert_untouched(before, ws.root)
    assert set(os.listdir(ws.root)) == names_before, "a refused command left files behind"


def test_prune_into_a_new_nested_folder_works(cli, ws: Workspace) -> None:
    before = snapshot(ws.root)
    out = ws.root / "a" / "b" / "compact.onnx"
    assert_ok(cli("prune", ws.model, "-o", out, "--plan-out", ws.root / "a" / "plan.json"))
    assert out.is_file() and (ws.root / "a" / "plan.json").is_file()
    assert_untouched(before, ws.root)


def test_prune_external_data_model_into_its_own_folder_keeps_the_input(cli, ws: Workspace) -> None:
    """A compact beside the input (same folder, other name) writes its own data file."""
    before = snapshot(ws.root)
    out = ws.ext_model.with_name("compact.onnx")
    assert_ok(cli("prune", ws.ext_model, "-o", out))
    assert_untouched(before, ws.root)
    from deploysparse.modelio import load_model

    load_model(out)


def test_run_twice_into_the_same_folder_replaces_it(cli, ws: Workspace) -> None:
    out = ws.root / "run-out"
    args = ["run", ws.recipe, "--model", ws.model, "--calib", ws.calib, "-o", out, "--json"]
    before = snapshot(ws.root)
    assert_ok(cli(*args))
    first = snapshot(out)
    assert_ok(cli(*args))
    assert_untouched(before, ws.root)
    assert set(snapshot(out)) == set(first)
