"""Before anything is written: no output may land on an input, and every output must be writable.

A user's files are sacred. A model is more than its `.onnx` file: its weights may live in external
data files it names (`model.onnx.data`), and a model deploysparse writes may bring such a file
along. So every command lists what it reads and what it will write, and `refuse_overlap` compares
them all by resolved path and by inode (a hard link or a different spelling of the same file is the
same file), before any work is done. An output folder (`run -o`) may not hold an input either,
because it is replaced as a whole.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from deploysparse.errors import UsageError

EXTERNAL_DATA_SUFFIX = ".data"


@dataclass(frozen=True)
class Item:
    """One file (or folder) a command reads or writes: what the user called it, and where it is."""

    label: str  # e.g. "-o", "--plan-out", "the input model"
    path: Path
    kind: str = "file"  # "file", "model" (plus its external data) or "folder"


def reads(label: str, path: str | os.PathLike[str] | None, kind: str = "file") -> list[Item]:
    """An input; a model also reads the external data files its header names."""
    return _items(label, path, kind, external_data_files)


def writes(label: str, path: str | os.PathLike[str] | None, kind: str = "file") -> list[Item]:
    """An output; a model may also write `<name>.data` beside it."""
    return _items(label, path, kind, lambda model: [model.with_name(model.name + EXTERNAL_DATA_SUFFIX)])


def _items(
    label: str, path: str | os.PathLike[str] | None, kind: str, data_files: Callable[[Path], list[Path]]
) -> list[Item]:
    """The item (none without a path) and, for a model, its external data files: `data_files(path)`."""
    if path is None:
        return []
    item = Item(label, Path(path), kind)
    if kind != "model":
        return [item]
    return [item, *(Item(f"{label}'s external data", data) for data in data_files(Path(path)))]


def external_data_files(model_path: Path) -> list[Path]:
    """The external data files a model's header names (an unreadable model names none: loading it
    reports the problem later)."""
    if not model_path.is_file():
        return []
    from deploysparse.modelio import external_data_files as named_by

    return named_by(model_path)


def refuse_overlap(outputs: Iterable[Item], inputs: Iterable[Item]) -> None:
    """UsageError when an output is an input (or holds one, for a folder), when two outputs are the
    same file, or when an output cannot be written where it is asked for."""
    outputs, inputs = list(outputs), list(inputs)
    for out in outputs:
        _check_writable(out)
        for inp in inputs:
            if _same(out.path, inp.path) or (out.kind == "model" and _content_named_data(out.path, inp.path)):
                raise UsageError(f"{out.label} {out.path} is {inp.label} ({inp.path}); choose another path")
            if out.kind == "folder" and _inside(inp.path, out.path):
                raise UsageError(
                    f"{out.label} {out.path} holds {inp.label} ({inp.path}), and the folder is replaced "
                    "as a whole; choose another folder"
                )
    for i, first in enumerate(outputs):
        for second in outputs[i + 1 :]:
            if _same(first.path, second.path):
                raise UsageError(f"{first.label} and {second.label} are the same path {first.path}")


def _content_named_data(model: Path, other: Path) -> bool:
    """`save_model` may name a model's data `<name>.<hash>.data` (and removes stale ones): such a
    name beside the output is the output's, whatever file the user keeps there."""
    pattern = re.compile(re.escape(model.name) + r"\.[0-9a-f]{16}\.data")
    return bool(pattern.fullmatch(other.name)) and _same(model.parent, other.parent)


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(a.resolve()) == os.path.normcase(b.resolve())


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _check_writable(item: Item) -> None:
    path = item.path
    if item.kind == "folder":
        if path.exists() and not path.is_dir():
            raise UsageError(f"{item.label} {path}: exists and is not a folder")
    elif path.is_dir():
        raise UsageError(f"{item.label} {path}: is a folder, expected a file name")
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"{item.label} {path}: {parent} is a file, not a folder")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{item.label} {path}: the folder {parent} is not writable")
