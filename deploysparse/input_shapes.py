"""The one parser of `--input-shape` for the whole package.

Users type shapes the way their other tools taught them: `1,3,32,32`, `1x3x32x32`, `(1, 3, 32, 32)`,
`input:1x3x32x32` (trtexec), `input:1,3,320,320` or `input:[1,3,320,320]` (polygraphy), and
trtexec's several inputs in one option, `a:1x3x8x8,b:1x1x8x8`. All of them mean the same thing
here, and every size must be a positive integer: a shape of 0 or -1 is a mistake to report, not a
model to export.
"""

from __future__ import annotations

from collections.abc import Iterable

from deploysparse.errors import UsageError

_EXAMPLE = "expected sizes like 1,3,224,224, 1x3x224x224 or NAME:1,3,224,224"


def parse_shape(text: str, option: str = "--input-shape") -> tuple[int, ...]:
    """'1,3,32,32', '1x3x32x32', '(1, 3, 32, 32)' or '[1,3,32,32]' -> (1, 3, 32, 32); sizes > 0."""
    cleaned = text.strip().strip("()[]").lower().replace("x", ",").replace(" ", "")
    parts = cleaned.split(",")
    if parts and parts[-1] == "":
        parts.pop()
    if not parts:
        raise UsageError(f"{option} {text!r} is empty; {_EXAMPLE}")
    if any(p == "" for p in parts):
        raise UsageError(f"{option} {text!r}: {_EXAMPLE}")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"{option} {text!r}: not a list of integers; {_EXAMPLE}") from None
    if any(d <= 0 for d in dims):
        raise UsageError(f"{option} {text!r}: has a size <= 0; every dimension must be a positive integer")
    return dims


def parse_input_shapes(values: Iterable[str], option: str = "--input-shape") -> dict[str, tuple[int, ...]]:
    """Every `--input-shape` value -> {input name: shape}; the name is "" when none was given
    (it then means the model's only input). An input named twice is refused."""
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values:
        for name, dims in _split_named(value):
            if name in shapes:
                shown = f"input {name!r}" if name else "the unnamed input"
                raise UsageError(f"{option}: {shown} is given twice")
            shapes[name] = parse_shape(dims, option)
    if "" in shapes and len(shapes) > 1:
        raise UsageError(f"{option}: name every input (NAME:1,3,32,32) when giving several shapes")
    return shapes


def _split_named(value: str) -> list[tuple[str, str]]:
    """`a:1x3x8x8,b:1x1x8x8` -> [(a, 1x3x8x8), (b, 1x1x8x8)]; `a:1,3,8,8` -> [(a, 1,3,8,8)]."""
    segments = value.split(",")
    if sum(":" in s for s in segments) > 1:  # trtexec: several NAME:DIMS joined by commas
        pairs, current = [], ""
        for segment in segments:
            if ":" in segment and current:
                pairs.append(current)
                current = segment
            else:
                current = f"{current},{segment}" if current else segment
        pairs.append(current)
        return [_one_named(p, value) for p in pairs]
    return [_one_named(value, value)]


def _one_named(text: str, whole: str) -> tuple[str, str]:
    name, sep, dims = text.rpartition(":")
    name = name.strip()
    if sep and not name:
        raise UsageError(f"--input-shape {whole!r}: empty input name before ':'")
    return name, dims
