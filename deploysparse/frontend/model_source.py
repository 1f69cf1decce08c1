"""Turn the MODEL argument of the CLI into an ONNX file: a bare .onnx as is, an entry point exported.

`deploysparse prune resnet.onnx` and `deploysparse prune mymodels:resnet18 --weights r18.pt
--input-shape 1,3,224,224` take the same path from here on. torch is imported only for an entry
point, so a bare-ONNX user never pays for (or needs) it. Whether a text names a file or an entry
point is decided here only (`is_entry_point`): `prune`, `run` and a sweep's models and data ask.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deploysparse.errors import ModelLoadError, UsageError
from deploysparse.input_shapes import parse_input_shapes

if TYPE_CHECKING:
    from torch import nn

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


@dataclass
class ResolvedModel:
    """The ONNX file to work on, and the PyTorch module it came from (None for a bare .onnx)."""

    onnx_path: Path
    module: nn.Module | None
    input_shape: tuple[int, ...] | None
    source: str  # "onnx" or "entry-point"


def resolve_model(
    model: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    input_shape: str | Sequence[int] | None = None,
    workdir: str | os.PathLike[str],
    calib_shape: Sequence[int] | None = None,
    exporter: str = "auto",
) -> ResolvedModel:
    """Resolve `model` (a path to .onnx, or `package.module:factory`) to an ONNX file.

    For an entry point the input shape comes from `input_shape`, else the module's own `input_shape`
    attribute, else the calibration data's shape (`calib_shape`); the export goes to `workdir`.
    """
    shape = _as_shape(input_shape)
    path = Path(model)
    if is_entry_point(model):
        return _resolve_entry_point(model, weights, shape, Path(workdir), calib_shape, exporter)
    if model.lower().endswith(".onnx"):
        if not path.exists():
            raise ModelLoadError(f"{model}: no such file")
        if weights is not None:
            raise UsageError(f"--weights applies to a PyTorch entry point, not to the ONNX file {model}")
        return ResolvedModel(onnx_path=path, module=None, input_shape=shape, source="onnx")
    if path.suffix.lower() in _CHECKPOINT_SUFFIXES:
        raise UsageError(
            f"{model} is a weights file; name the architecture as an entry point and pass the file as "
            f"--weights, e.g. 'mypackage.models:build --weights {model}'"
        )
    if path.exists():
        raise UsageError(f"{model}: not an .onnx file and not an entry point 'package.module:factory'")
    raise ModelLoadError(f"{model}: no such file, and not an entry point 'package.module:factory'")


def is_entry_point(text: str, folder: str | os.PathLike[str] | None = None) -> bool:
    """Whether `text` names a Python callable (`package.module:attr`, `path/file.py:attr`) rather
    than a file. A file wins: a name ending in .onnx (any case), a Windows drive path (`C:\\m.onnx`)
    and a path that exists (relative to `folder` when given, as a sweep's paths are) are files, colon
    or not; so is anything whose module or attribute is not a dotted Python name."""
    if text.lower().endswith(".onnx") or _is_windows_drive(text):
        return False
    module, sep, attr = text.partition(":")
    if not (sep and module and attr) or not _dotted_name(attr):
        return False
    if not (module.endswith(".py") or _dotted_name(module)):
        return False
    path = Path(text)
    return not (path if folder is None or path.is_absolute() else Path(folder) / path).exists()


def _dotted_name(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def _resolve_entry_point(
    spec: str,
    weights: str | os.PathLike[str] | None,
    shape: tuple[int, ...] | None,
    workdir: Path,
    calib_shape: Sequence[int] | None,
    exporter: str,
) -> ResolvedModel:
    try:
        import torch
    except ImportError as exc:
        raise UsageError(
            f"entry point {spec!r} needs PyTorch; install it with: pip install 'deploysparse[torch]'"
        ) from exc
    from deploysparse.frontend.torch_export import export_onnx
    from deploysparse.frontend.torch_loader import load_entry_point

    module = load_entry_point(spec, weights)
    if shape is None:
        shape = _as_shape(getattr(module, "input_shape", None))
    if shape is None and calib_shape is not None:
        shape = (1, *tuple(int(d) for d in calib_shape)[1:])
    if shape is None:
        raise UsageError(
            f"entry point {spec!r}: the input shape is unknown; pass --input-shape (e.g. 1,3,224,224) "
            "or calibration data"
        )
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.rsplit(":", 1)[1]) or "model"
    onnx_path = export_onnx(module, example, workdir / f"{name}.onnx", exporter=exporter)
    return ResolvedModel(onnx_path=onnx_path, module=module, input_shape=shape, source="entry-point")


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse '1,3,32,32' (or '1x3x32x32', 'NAME:1,3,32,32') into a shape of positive sizes."""
    shapes = parse_input_shapes([text])
    if len(shapes) != 1:
        raise UsageError(f"--input-shape {text!r}: an entry point takes one input shape")
    return next(iter(shapes.values()))


def _as_shape(value: str | Sequence[int] | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_input_shape(value)
    dims = tuple(int(d) for d in value)
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(f"input shape {value!r} must be positive sizes like (1, 3, 224, 224)")
    return dims


def _is_windows_drive(model: str) -> bool:
    return bool(re.match(r"^[A-Za-z]:[\\/]", model))
