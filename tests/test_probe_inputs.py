"""Probes: bad input of every kind (files that are not models, bad options, bad arrays, bad plans,
recipes and preprocess settings). Each is one `error:` line naming the culprit and exit 2, never a
traceback, and no file of the user's changes.
"""

from __future__ import annotations

import json
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.archs.onnxgraphs import dead_convnet
from tests.probing import Workspace, assert_bad_input, assert_ok, assert_untouched, make_workspace, snapshot


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


def _file(ws: Workspace, name: str, content: bytes | str) -> Path:
    path = ws.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


def _array(ws: Workspace, name: str, array: np.ndarray, allow_pickle: bool = False) -> Path:
    path = ws.root / name
    np.save(path, array, allow_pickle=allow_pickle)
    return path


def _calib_with(value: float) -> np.ndarray:
    data = np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)
    data[3, 1, 2, 2] = value
    return data


def _edited_model(ws: Workspace, name: str, edit: Callable[[onnx.ModelProto], None]) -> Path:
    model = dead_convnet()
    edit(model)
    path = ws.root / name
    onnx.save(model, str(path))
    return path


def _cycle(model: onnx.ModelProto) -> None:
    model.graph.node[0].input[0] = model.graph.node[1].output[0]


def _dangling(model: onnx.ModelProto) -> None:
    model.graph.node[1].input[0] = "nobody_makes_this"


def _two_producers(model: onnx.ModelProto) -> None:
    model.graph.node[1].output[0] = model.graph.node[0].output[0]


def _no_shape(model: onnx.ModelProto) -> None:
    model.graph.input[0].type.tensor_type.ClearField("shape")


def _ext_location(ws: Workspace, location: str) -> Path:
    model = onnx.load(str(ws.ext_model), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path = ws.root / "ext" / f"moved-{len(location)}.onnx"
    onnx.save(model, str(path))
    return path


def _plan(ws: Workspace, edit: Callable[[dict], None]) -> Path:
    data = json.loads(ws.plan.read_text())
    edit(data)
    path = ws.root / "edited-plan.json"
    path.write_text(json.dumps(data))
    return path


def _first_group(data: dict) -> dict:
    return data["groups"][0]


def _recipe(ws: Workspace, text: str) -> Path:
    return _file(ws, "bad-recipe.yaml", text)


def _png(width: int = 8, height: int = 8) -> bytes:
    raw = b"".join(b"\x00" + bytes([(x * 30 + y) % 256 for x in range(width * 3)]) for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _image_folder(ws: Workspace, preprocess: str, truncate: bool = False) -> Path:
    folder = ws.root / "images"
    folder.mkdir(exist_ok=True)
    for i in range(3):
        data = _png()
        (folder / f"{i}.png").write_bytes(data[: len(data) // 2] if truncate and i == 1 else data)
    (folder / "preprocess.yaml").write_text(preprocess)
    return folder


def _prune(ws: Workspace, *extra) -> list:
    return ["prune", ws.model, "-o", ws.root / "out.onnx", *extra]


def _validate(ws: Workspace, *extra, data: Path | None = None) -> list:
    return ["validate", ws.model, ws.model, "--data", data or ws.calib, *extra]


def _run(ws: Workspace, *extra, recipe: Path | None = None) -> list:
    return ["run", recipe or ws.recipe, "--model", ws.model, "--calib", ws.calib, "-o", ws.root / "o", *extra]


# id -> (argv from the workspace, words the error line must hold)
BAD: dict[str, tuple[Callable[[Workspace], list], tuple[str, ...]]] = {
    # files that are not (valid) models
    "model is text": (
        lambda w: ["prune", _file(w, "t.onnx", "hello\n"), "-o", w.root / "o.onnx"],
        ("t.onnx",),
    ),
    "model is empty": (lambda w: ["prune", _file(w, "e.onnx", b""), "-o", w.root / "o.onnx"], ("e.onnx",)),
    "model is truncated": (
        lambda w: ["prune", _file(w, "h.onnx", w.model.read_bytes()[:300]), "-o", w.root / "o.onnx"],
        ("h.onnx",),
    ),
    "model is a folder": (lambda w: ["prune", w.root / "ext", "-o", w.root / "o.onnx"], ("ext",)),
    "model is missing": (lambda w: ["prune", w.root / "no.onnx", "-o", w.root / "o.onnx"], ("no.onnx",)),
    "model is a numpy file": (lambda w: ["analyze", _file(w, "x.onnx", w.calib.read_bytes())], ("x.onnx",)),
    "model has a cycle": (
        lambda w: ["prune", _edited_model(w, "cyc.onnx", _cycle), "-o", w.root / "o.onnx"],
        ("cyc.onnx",),
    ),
    "model has a dangling input": (
        lambda w: ["prune", _edited_model(w, "dang.onnx", _dangling), "-o", w.root / "o.onnx"],
        ("dang.onnx",),
    ),
    "model has two producers of one tensor": (
        lambda w: ["analyze", _edited_model(w, "two.onnx", _two_producers)],
        ("two.onnx",),
    ),
    "model input without a shape": (
        lambda w: ["prune", _edited_model(w, "ns.onnx", _no_shape), "-o", w.root / "o.onnx"],
        ("ns.onnx", "shape"),
    ),
    "external data missing": (
        lambda w: ["prune", _ext_location(w, "gone.data"), "-o", w.root / "o.onnx"],
        ("external data",),
    ),
    "external data escaping the folder": (
        lambda w: ["prune", _ext_location(w, "../../../etc/hostname"), "-o", w.root / "o.onnx"],
        ("external data",),
    ),
    "validate: compact is not a model": (
        lambda w: ["validate", w.model, _file(w, "c.onnx", "x"), "--data", w.calib],
        ("c.onnx",),
    ),
    "bench: model is not a model": (lambda w: ["bench", _file(w, "b.onnx", "x")], ("b.onnx",)),
    "build: model is not a model": (
        lambda w: ["build", _file(w, "b.onnx", "x"), "-o", w.root / "bo"],
        ("b.onnx",),
    ),
    # options
    "--input-shape negative": (lambda w: _prune(w, "--input-shape", "1,3,-8,8"), ("--input-shape",)),
    "--input-shape zero": (lambda w: _prune(w, "--input-shape", "0x3x8x8"), ("--input-shape",)),
    "--input-shape not numbers": (lambda w: _prune(w, "--input-shape", "a,b"), ("--input-shape",)),
    "--input-shape empty": (lambda w: _prune(w, "--input-shape", ""), ("--input-shape",)),
    "--input-shape names no input": (lambda w: _prune(w, "--input-shape", "images:1,3,8,8"), ("images",)),
    "--input-shape wrong rank": (lambda w: _prune(w, "--input-shape", "1,3,8"), ("rank",)),
    "--input-shape off the static dims": (
        lambda w: _prune(w, "--input-shape", "1,3,9,9"),
        ("--input-shape",),
    ),
    "--input-shape given twice": (
        lambda w: _prune(w, "--input-shape", "input:1,3,8,8", "--input-shape", "input:2,3,8,8"),
        ("twice",),
    ),
    "--dead-threshold negative": (lambda w: _prune(w, "--dead-threshold", "-1"), ("--dead-threshold",)),
    "--dead-threshold NaN": (lambda w: _prune(w, "--dead-threshold", "nan"), ("--dead-threshold",)),
    "--dead-threshold inf": (lambda w: _prune(w, "--dead-threshold", "inf"), ("--dead-threshold",)),
    "analyze --dead-threshold NaN": (
        lambda w: ["analyze", w.model, "--dead-threshold", "nan"],
        ("--dead-threshold",),
    ),
    "--round-to 0 with dead": (lambda w: _prune(w, "--round-to", "0"), ("--round-to",)),
    "--ratio with dead": (lambda w: _prune(w, "--ratio", "0.5"), ("--ratio",)),
    "--criterion unknown": (lambda w: _prune(w, "--criterion", "magic"), ("magic",)),
    "--weights with an .onnx model": (lambda w: _prune(w, "--weights", w.calib), ("--weights",)),
    "validate --batch 0": (lambda w: _validate(w, "--batch", "0"), ("--batch",)),
    "validate --batch -3": (lambda w: _validate(w, "--batch", "-3"), ("--batch",)),
    "validate --atol negative": (lambda w: _validate(w, "--atol", "-1"), ("--atol",)),
    "validate --atol NaN": (lambda w: _validate(w, "--atol", "nan"), ("--atol",)),
    "validate --min-cosine text": (lambda w: _validate(w, "--min-cosine", "high"), ("--min-cosine",)),
    "validate --precision unknown": (lambda w: _validate(w, "--precision", "fp8"), ("--precision",)),
    "bench --batch 0": (lambda w: ["bench", w.model, "--batch", "0"], ("--batch",)),
    "bench --batch text": (lambda w: ["bench", w.model, "--batch", "one"], ("--batch",)),
    "bench --iters 0": (lambda w: ["bench", w.model, "--iters", "0"], ("--iters",)),
    "bench --warmup -1": (lambda w: ["bench", w.model, "--warmup", "-1"], ("--warmup",)),
    "bench --threads 0": (lambda w: ["bench", w.model, "--threads", "0"], ("--threads",)),
    "advise-depth --samples 0": (
        lambda w: ["advise-depth", "--data", w.calib, "--samples", "0"],
        ("--samples",),
    ),
    "advise-depth --identity-threshold NaN": (
        lambda w: ["advise-depth", "--data", w.calib, "--identity-threshold", "nan"],
        ("--identity-threshold",),
    ),
    "advise-depth --drop-blocks without --model": (
        lambda w: ["advise-depth", "--data", w.calib, "--drop-blocks", w.root / "d.onnx"],
        ("--model",),
    ),
    "build int8 without --calib": (
        lambda w: ["build", w.model, "--precision", "int8", "-o", w.root / "bo"],
        ("--calib",),
    ),
    "build --shapes unknown input": (
        lambda w: ["build", w.model, "--shapes", "images:1x3x8x8", "-o", w.root / "bo"],
        ("images",),
    ),
    "unknown command": (lambda w: ["prunee", w.model], ("prunee",)),
    "unknown option": (lambda w: _prune(w, "--ratoi", "0.3"), ("--ratoi",)),
    # arrays
    "calib holds NaN": (lambda w: _prune(w, "--calib", _array(w, "n.npy", _calib_with(np.nan))), ("NaN",)),
    "calib holds Inf": (
        lambda w: _prune(
            w, "--calib", _array(w, "i.npy", _calib_with(np.inf)), "--criterion", "l1", "--ratio", "0.3"
        ),
        ("NaN or Inf",),
    ),
    "calib of the wrong shape": (
        lambda w: _prune(w, "--calib", _array(w, "s.npy", np.zeros((4, 5, 8, 8), np.float32))),
        ("input",),
    ),
    "calib with no samples": (
        lambda w: _prune(w, "--calib", _array(w, "z.npy", np.zeros((0, 3, 8, 8), np.float32))),
        ("no samples",),
    ),
    "calib is pickled objects": (
        lambda w: _prune(
            w, "--calib", _array(w, "p.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        ),
        ("p.npy",),
    ),
    "calib is text": (lambda w: _prune(w, "--calib", _file(w, "t.npy", "1,2,3\n")), ("t.npy",)),
    "calib of strings": (
        lambda w: _prune(w, "--calib", _array(w, "u.npy", np.full((8, 3, 8, 8), "a"))),
        ("dtype",),
    ),
    "calib with an unknown suffix": (lambda w: _prune(w, "--calib", _file(w, "c.csv", "1\n")), ("c.csv",)),
    "calib npz without the input": (
        lambda w: _prune(w, "--calib", _npz(w, other=np.zeros((2, 3, 8, 8), np.float32))),
        ("input",),
    ),
    "validation data holds NaN": (
        lambda w: _validate(w, data=_array(w, "vn.npy", _calib_with(np.nan))),
        ("NaN",),
    ),
    "validation labels pickled": (
        lambda w: _validate(
            w, "--labels", _array(w, "lp.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
        ),
        ("lp.npy",),
    ),
    "validation labels float": (
        lambda w: _validate(w, "--labels", _array(w, "lf.npy", np.ones(8))),
        ("labels",),
    ),
    "validation labels 2-D": (
        lambda w: _validate(w, "--labels", _array(w, "l2.npy", np.ones((8, 2), np.int64))),
        ("labels",),
    ),
    "validation labels too few": (
        lambda w: _validate(w, "--labels", _array(w, "l3.npy", np.ones(3, np.int64))),
        ("labels",),
    ),
    "validation labels missing": (lambda w: _validate(w, "--labels", w.root / "nolabels.npy"), ("nolabels",)),
    "advise-depth data holds NaN": (
        lambda w: ["advise-depth", "--data", _array(w, "an.npy", _calib_with(np.nan))],
        ("NaN",),
    ),
    "advise-depth data is 1-D": (
        lambda w: ["advise-depth", "--data", _array(w, "a1.npy", np.ones(5, np.float32))],
        ("a1.npy",),
    ),
    # plans
    "plan: NaN scale": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: _first_group(d).update(scales=[float("nan")] * 8))),
        ("scales",),
    ),
    "plan: scales of the wrong length": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: _first_group(d).update(scales=[1.0]))),
        ("scales",),
    ),
    "plan: fractional index": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: _first_group(d).update(keep=[0, 1.5, 2]))),
        ("keep",),
    ),
    "plan: string index": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: _first_group(d).update(keep=["0", "2"]))),
        ("keep",),
    ),
    "plan: boolean index": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: _first_group(d).update(keep=[True, 2]))),
        ("keep",),
    ),
    "plan: index out of range": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: _first_group(d).update(keep=[0, 99]))),
        ("keep",),
    ),
    "plan: repeated index": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: _first_group(d).update(keep=[0, 0, 2]))),
        ("keep",),
    ),
    "plan: keep is a string": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: _first_group(d).update(keep="0,1"))),
        ("keep",),
    ),
    "plan: a group is a string": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: d["groups"].insert(0, "g0"))),
        ("groups[0]",),
    ),
    "plan: groups is an object": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: d.update(groups={"g0": [0]}))),
        ("groups",),
    ),
    "plan: group id is a number": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: _first_group(d).update(id=0))),
        ("id",),
    ),
    "plan: unknown group": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: _first_group(d).update(id="g99"))),
        ("g99",),
    ),
    "plan: group listed twice": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: d["groups"].append(d["groups"][0]))),
        ("twice",),
    ),
    "plan: unknown key in a group": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: _first_group(d).update(kepp=[0]))),
        ("kepp",),
    ),
    "plan: unknown top-level key": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: d.update(extra=1))),
        ("extra",),
    ),
    "plan: channels disagree": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: _first_group(d).update(channels=99))),
        ("channels",),
    ),
    "plan: merge with a NaN factor": (
        lambda w: _prune(
            w, "--plan", _plan(w, lambda d: _first_group(d).update(merges=[[1, 0, float("nan")]]))
        ),
        ("merges",),
    ),
    "plan: merge of one channel into itself": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: _first_group(d).update(merges=[[1, 1, 1.0]]))),
        ("merges",),
    ),
    "plan: constants Inf": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: d.update(constants={"x": [float("inf")]}))),
        ("constants",),
    ),
    "plan: notes not strings": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: d.update(notes=[1]))),
        ("notes",),
    ),
    "plan: empty keep": (
        lambda w: _prune(w, "--plan", _plan(w, lambda d: _first_group(d).update(keep=[]))),
        ("at least one",),
    ),
    "plan: wrong format": (lambda w: _prune(w, "--plan", _plan(w, lambda d: d.update(format=2))), ("plan",)),
    "plan: a list": (lambda w: _prune(w, "--plan", _file(w, "l.json", "[1, 2]")), ("l.json",)),
    "plan: missing": (lambda w: _prune(w, "--plan", w.root / "noplan.json"), ("noplan.json",)),
    # recipes
    "recipe: dead with a ratio": (
        lambda w: _run(w, recipe=_recipe(w, "prune:\n  criterion: dead\n  ratio: 0.3\n")),
        ("ratio",),
    ),
    "recipe: unknown top-level key": (lambda w: _run(w, recipe=_recipe(w, "prnue: {}\n")), ("prnue",)),
    "recipe: unknown nested key": (
        lambda w: _run(w, recipe=_recipe(w, "bench:\n  iterations: 3\n")),
        ("iterations",),
    ),
    "recipe: wrong type": (lambda w: _run(w, recipe=_recipe(w, "bench:\n  iters: many\n")), ("iters",)),
    "recipe: not YAML": (lambda w: _run(w, recipe=_recipe(w, "prune: [\n")), ("YAML",)),
    "recipe: a list": (lambda w: _run(w, recipe=_recipe(w, "- prune\n")), ("mapping",)),
    "recipe: missing": (lambda w: _run(w, recipe=w.root / "none.yaml"), ("none.yaml",)),
    "recipe: key twice": (
        lambda w: _run(w, recipe=_recipe(w, "bench:\n  iters: 3\n  iters: 4\n")),
        ("twice",),
    ),
    "run: --labels missing": (lambda w: _run(w, "--labels", w.root / "nolabels.npy"), ("nolabels",)),
    "run: --labels pickled": (
        lambda w: _run(w, "--labels", _array(w, "rp.npy", np.array([{}], dtype=object), allow_pickle=True)),
        ("rp.npy",),
    ),
    "run: --input-shape negative": (lambda w: _run(w, "--input-shape", "1,-3"), ("--input-shape",)),
    "run: --data NaN": (lambda w: _run(w, "--data", _array(w, "dn.npy", _calib_with(np.nan))), ("NaN",)),
    # image folders
    "images: preprocess mean is text": (
        lambda w: _prune(w, "--calib", _image_folder(w, "mean: abc\n")),
        ("mean",),
    ),
    "images: preprocess std 0": (lambda w: _prune(w, "--calib", _image_folder(w, "std: 0\n")), ("std",)),
    "images: preprocess scale is a list of text": (
        lambda w: _prune(w, "--calib", _image_folder(w, "scale: [a]\n")),
        ("scale",),
    ),
    "images: preprocess dtype unknown": (
        lambda w: _prune(w, "--calib", _image_folder(w, "dtype: float99\n")),
        ("dtype",),
    ),
    "images: preprocess resize negative": (
        lambda w: _prune(w, "--calib", _image_folder(w, "resize: -3x4\n")),
        ("resize",),
    ),
    "images: preprocess unknown option": (
        lambda w: _prune(w, "--calib", _image_folder(w, "sclae: 1\n")),
        ("sclae",),
    ),
    "images: preprocess not a mapping": (
        lambda w: _prune(w, "--calib", _image_folder(w, "- 1\n")),
        ("preprocess.yaml",),
    ),
    "images: truncated PNG": (
        lambda w: _prune(w, "--calib", _image_folder(w, "resize: 8x8\n", truncate=True)),
        ("1.png",),
    ),
    "calib is an empty folder": (lambda w: _prune(w, "--calib", _folder(w, "empty")), ("preprocess.yaml",)),
    "calib is a model": (lambda w: ["analyze", w.model, "--calib", w.model], ("model.onnx",)),
    "entry point module missing": (
        lambda w: ["prune", "nosuch_pkg.models:build", "-o", w.root / "o.onnx", "--input-shape", "1,3,8,8"],
        ("nosuch_pkg",),
    ),
    "entry point weights missing": (
        lambda w: [
            "prune",
            "deploysparse.zoo.digits:digits_model",
            "-o",
            w.root / "o.onnx",
            "--weights",
            w.root / "w.pt",
        ],
        ("w.pt",),
    ),
    "weights file given as the model": (
        lambda w: ["prune", _file(w, "net.pt", b"x"), "-o", w.root / "o.onnx"],
        ("net.pt",),
    ),
    "--ratio above 1": (
        lambda w: _prune(w, "--criterion", "l1", "--ratio", "1.5", "--calib", w.calib),
        ("--ratio",),
    ),
    "--flops-target 0": (
        lambda w: _prune(w, "--criterion", "l1", "--flops-target", "0", "--calib", w.calib),
        ("--flops-target",),
    ),
    "--min-channels 0": (
        lambda w: _prune(w, "--criterion", "l1", "--ratio", "0.3", "--min-channels", "0", "--calib", w.calib),
        ("--min-channels",),
    ),
    "demo --flops-target 2": (
        lambda w: ["demo", "--flops-target", "2", "-o", w.root / "d"],
        ("--flops-target",),
    ),
    "validate: models with other inputs": (
        lambda w: ["validate", w.model, _other_input_name(w), "--data", w.calib],
        ("inputs",),
    ),
    # reports
    "check: report is binary": (lambda w: ["check", w.calib, "--baseline", w.baseline], ("calib.npy",)),
    "check: report is a JSON list": (
        lambda w: ["check", _file(w, "l.json", "[]"), "--baseline", w.baseline],
        ("l.json",),
    ),
    "check: report lacks a key": (
        lambda w: ["check", _file(w, "k.json", json.dumps({"model": {}})), "--baseline", w.baseline],
        ("k.json",),
    ),
    "check: report is not JSON": (
        lambda w: ["check", _file(w, "r.json", "{"), "--baseline", w.baseline],
        ("r.json",),
    ),
    "check: baseline missing": (
        lambda w: ["check", w.report, "--baseline", w.root / "nobase.json"],
        ("nobase.json",),
    ),
    "check: --latency-tolerance negative": (
        lambda w: ["check", w.report, "--baseline", w.baseline, "--latency-tolerance", "-1"],
        ("--latency-tolerance",),
    ),
}


def _folder(ws: Workspace, name: str) -> Path:
    folder = ws.root / name
    folder.mkdir()
    return folder


def _other_input_name(ws: Workspace) -> Path:
    model = dead_convnet()
    old = model.graph.input[0].name
    model.graph.input[0].name = "images"
    for node in model.graph.node:
        node.input[:] = ["images" if i == old else i for i in node.input]
    path = ws.root / "images.onnx"
    onnx.save(model, str(path))
    return path


def _npz(ws: Workspace, **arrays: np.ndarray) -> Path:
    path = ws.root / "calib.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_2(cli, ws: Workspace, case: str) -> None:
    build_args, culprits = BAD[case]
    args = build_args(ws)
    before = snapshot(ws.root)
    result = cli(*args)
    assert_bad_input(result, *culprits)
    assert_untouched(before, ws.root)
    assert not (ws.root / "out.onnx").exists() and not (ws.root / "o").exists()


# Forms users type for an input shape (trtexec, polygraphy, Python) all mean (1, 3, 8, 8).
SHAPE_FORMS = [
    "1,3,8,8",
    "1x3x8x8",
    "(1, 3, 8, 8)",
    "[1,3,8,8]",
    "input:1x3x8x8",
    "input:1,3,8,8",
    "input:[1,3,8,8]",
]


@pytest.mark.parametrize("form", SHAPE_FORMS)
def test_input_shape_forms_are_accepted(cli, ws: Workspace, form: str) -> None:
    before = snapshot(ws.root)
    result = cli("analyze", ws.model, "--input-shape", form, "--json")
    assert_ok(result)
    assert_untouched(before, ws.root)
    assert json.loads(result.out)["flops"] > 0


def test_one_parser_for_every_shape_option() -> None:
    """The library, the entry-point front end and the CLI share one parser (trtexec's multi-input form too)."""
    from deploysparse.errors import UsageError
    from deploysparse.frontend.model_source import parse_input_shape
    from deploysparse.input_shapes import parse_input_shapes

    assert parse_input_shapes(["a:1x3x8x8,b:1,1,8,8"]) == {"a": (1, 3, 8, 8), "b": (1, 1, 8, 8)}
    assert parse_input_shapes(["a:[1,3,8,8],b:[1,1,8,8]"]) == {"a": (1, 3, 8, 8), "b": (1, 1, 8, 8)}
    assert parse_input_shape("name:1,3,320,320") == (1, 3, 320, 320)
    for bad in ("1,0,3", "-1x3", "1,,3", "x", ":1,3"):
        with pytest.raises(UsageError):
            parse_input_shapes([bad])
        with pytest.raises(UsageError):
            parse_input_shape(bad)


def test_old_opset_models_prune_exactly(cli, ws: Workspace) -> None:
    """Opset 9, 11 and 13 models are valid before and after surgery (the checker ran on them)."""
    import onnxruntime as ort

    for opset in (9, 11, 13):
        path = ws.root / f"op{opset}.onnx"
        onnx.save(dead_convnet(opset=opset), str(path))
        out = ws.root / f"op{opset}-compact.onnx"
        assert_ok(cli("prune", path, "-o", out))
        onnx.checker.check_model(onnx.load(str(out)))
        x = np.random.default_rng(opset).standard_normal((3, 3, 8, 8)).astype(np.float32)
        a = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
        b = ort.InferenceSession(str(out)).run(None, {"input": x})[0]
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_model_without_opset_import_is_bad_input(cli, ws: Workspace) -> None:
    model = dead_convnet()
    del model.opset_import[:]
    path = ws.root / "noopset.onnx"
    onnx.save(model, str(path))
    assert_bad_input(cli("prune", path, "-o", ws.root / "out.onnx"), "noopset.onnx")


def test_model_with_a_function_op_it_cannot_resolve_is_bad_input(cli, ws: Workspace) -> None:
    model = dead_convnet()
    model.graph.node.append(helper.make_node("Frobnicate", ["input"], ["extra"], domain="custom.ops"))
    path = ws.root / "custom.onnx"
    onnx.save(model, str(path))
    result = cli("prune", path, "-o", ws.root / "out.onnx")
    assert_bad_input(result, "custom.onnx")


def test_pickled_labels_never_unpickle(cli, ws: Workspace, tmp_path: Path) -> None:
    """A pickle is code: --labels refuses it without loading it."""
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = ws.root / "evil.npy"
    np.save(path, np.array([Boom()], dtype=object), allow_pickle=True)
    assert_bad_input(cli(*_validate(ws, "--labels", path)), "evil.npy")
    assert not marker.exists()
    pickle.loads(pickle.dumps(1))  # pickle itself still works: the refusal is ours


def test_output_in_a_folder_the_file_system_refuses(
    cli, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import tempfile

    folder = ws.root / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root may write anyway: let the file system say no, as it would to a user
        real = tempfile.mkstemp

        def denied(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == folder:
                raise PermissionError(13, "Permission denied", str(dir))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", denied)
    before = snapshot(ws.root)
    assert_bad_input(cli("prune", ws.model, "-o", folder / "c.onnx"), "ro")
    assert_untouched(before, ws.root)
    folder.chmod(0o755)


def test_interrupt_is_one_line_and_exit_130(cli, ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from deploysparse import api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "prune", interrupted)
    result = cli("prune", ws.model, "-o", ws.root / "out.onnx")
    assert result.code == 130 and result.err.strip() == "interrupted"


def test_a_broken_onnxruntime_is_not_reported_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """An import that fails inside onnxruntime (a bad DLL, an interrupted import) says so."""
    import builtins

    from deploysparse.backends.onnxruntime.runtime import load_onnxruntime
    from deploysparse.errors import BackendError

    real_import = builtins.__import__

    def failing(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("libonnxruntime.so: cannot open shared object file", name="onnxruntime.capi")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing)
    with pytest.raises(BackendError, match=r"installed but cannot be imported.*libonnxruntime"):
        load_onnxruntime()

    def missing(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", missing)
    with pytest.raises(BackendError, match="not installed"):
        load_onnxruntime()
