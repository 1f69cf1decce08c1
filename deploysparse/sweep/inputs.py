"""A sweep's inputs made content-addressed: every model and data file is stored once under its sha256.

Points are keyed by these hashes (not by paths), so moving a file does not re-run a sweep and
changing its bytes does; and on a Ray cluster the bytes travel to workers by hash, never by a path
that exists only on the driver. An entry-point model is exported to ONNX once, here.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploysparse.atomic import atomic_path
from deploysparse.errors import ModelLoadError, UsageError
from deploysparse.frontend.model_source import resolve_model
from deploysparse.hashing import sha256_file
from deploysparse.sweep.config import ModelSpec, Sweep, SweepError


@dataclass(frozen=True)
class Blob:
    """A file stored under its content hash: `path` is `<store>/<sha256><suffix>`."""

    sha256: str
    path: Path

    @property
    def suffix(self) -> str:
        return self.path.suffix


@dataclass
class PreparedModel:
    """One model of the sweep as ONNX, with the nn.Module it came from (for fine-tuning), if any."""

    spec: ModelSpec
    onnx: Blob
    module: Any = None  # torch.nn.Module for an entry point


@dataclass
class PreparedInputs:
    """Everything the points of a sweep read, each by hash."""

    models: list[PreparedModel]
    calib: Blob
    val: Blob
    labels: Blob | None
    finetune: Callable[..., Any] | None = None
    finetune_sha256: str | None = None  # hash of the fine-tuning function's source file
    blobs: dict[str, Path] = field(default_factory=dict)  # sha256 -> file, every blob above

    def data_hashes(self) -> list[str | None]:
        return [self.calib.sha256, self.val.sha256, self.labels.sha256 if self.labels else None]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_file(path: Path, store: Path, suffix: str) -> Blob:
    """Copy `path` into `store` under its hash (once); the original is only read."""
    digest = sha256_file(path)
    target = store / f"{digest}{suffix}"
    if not target.is_file():
        with atomic_path(target, suffix=suffix) as tmp:
            shutil.copyfile(path, tmp)
    return Blob(digest, target)


def store_array(value: np.ndarray | dict[str, np.ndarray], store: Path) -> Blob:
    """Save an array (.npy) or a dict of arrays (.npz) into `store` under the hash of its bytes."""
    suffix = ".npz" if isinstance(value, dict) else ".npy"
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".array-", dir=store) as tmp:
        path = Path(tmp) / f"array{suffix}"
        if isinstance(value, dict):
            np.savez(path, **value)
        else:
            np.save(path, value)
        return store_file(path, store, suffix)


def prepare_inputs(sweep: Sweep, store: Path) -> PreparedInputs:
    """Resolve models (exporting entry points), data and the fine-tuning function into `store`."""
    store.mkdir(parents=True, exist_ok=True)
    calib = _data_blob(sweep, sweep.data.calib, "data.calib", store)
    labels = None
    if sweep.data.val is None:
        val = calib
    elif sweep.is_entry_point(sweep.data.val):
        value = _call(sweep, sweep.data.val, "data.val")
        if isinstance(value, tuple):
            if len(value) != 2:
                raise SweepError(
                    f"data.val: {sweep.data.val} returned {len(value)} values, expected (inputs, labels)"
                )
            value, labels_array = value
            labels = store_array(_labels_array(labels_array, sweep.data.val), store)
        val = store_array(_input_array(value, sweep.data.val), store)
    else:
        val = _data_blob(sweep, sweep.data.val, "data.val", store)
    if sweep.data.labels is not None:
        labels = _data_blob(sweep, sweep.data.labels, "data.labels", store)
    finetune, finetune_sha = (None, None)
    if sweep.finetune is not None:
        finetune, finetune_sha = _finetune_function(sweep)
    calib_shape = list(np.load(calib.path, mmap_mode="r").shape) if calib.suffix == ".npy" else None
    models = [
        _model(sweep, spec, store, calib_shape, sweep.finetune is not None) for spec in sweep.model_specs()
    ]
    blobs = {b.sha256: b.path for b in (calib, val, labels, *(m.onnx for m in models)) if b is not None}
    return PreparedInputs(models, calib, val, labels, finetune, finetune_sha, blobs)


def _data_blob(sweep: Sweep, text: str, key: str, store: Path) -> Blob:
    if sweep.is_entry_point(text):
        value = _call(sweep, text, key)
        if isinstance(value, tuple):
            raise SweepError(f"{key}: {text} returned a tuple; only data.val may return (inputs, labels)")
        return store_array(_input_array(value, text), store)
    path = Path(sweep.resolve(text) or text)
    if not path.is_file():
        raise SweepError(f"{key}: {path}: no such file (give a .npy or .npz file, or module:function)")
    if path.suffix not in (".npy", ".npz"):
        raise SweepError(f"{key}: {path}: a sweep reads .npy or .npz data (or module:function)")
    return store_file(path, store, path.suffix)


def _input_array(value: Any, source: str) -> np.ndarray | dict[str, np.ndarray]:
    if isinstance(value, dict):
        return {str(k): np.asarray(v) for k, v in value.items()}
    array = np.asarray(value)
    if array.ndim < 2:
        raise SweepError(f"{source} returned an array of shape {array.shape}; expected a batch of inputs")
    return array


def _labels_array(value: Any, source: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise SweepError(f"{source}: labels must be a 1-D integer array, got {array.dtype} {array.shape}")
    return array


def import_callable(spec: str, folder: Path | None) -> Callable[..., Any]:
    """`package.module:function`, importable from sys.path, the working folder or `folder`."""
    module_name, _, attr = spec.partition(":")
    for extra in (str(Path.cwd()), str(folder) if folder else None):
        if extra and extra not in sys.path:
            sys.path.append(extra)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SweepError(f"{spec}: cannot import module {module_name!r} ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(target, part):
            raise SweepError(f"{spec}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise SweepError(f"{spec}: {attr!r} is not callable")
    return target


def _call(sweep: Sweep, spec: str, key: str) -> Any:
    function = import_callable(spec, sweep.source.parent if sweep.source else None)
    try:
        return function()
    except Exception as exc:
        raise SweepError(f"{key}: {spec} failed: {type(exc).__name__}: {exc}") from exc


def _finetune_function(sweep: Sweep) -> tuple[Callable[..., Any], str]:
    assert sweep.finetune is not None
    function = import_callable(sweep.finetune.function, sweep.source.parent if sweep.source else None)
    module = sys.modules.get(function.__module__)
    source = getattr(module, "__file__", None)
    digest = sha256_file(Path(source)) if source else sweep.finetune.function
    return function, digest


def _model(
    sweep: Sweep, spec: ModelSpec, store: Path, calib_shape: list[int] | None, need_module: bool
) -> PreparedModel:
    """The model as an .onnx blob in `store`: a file copied, an entry point exported (its module kept
    for fine-tuning); resolve_model decides which and refuses what is neither."""
    if need_module and not sweep.is_entry_point(spec.model):
        raise SweepError(
            f"models: {spec.model}: fine-tuning needs the PyTorch model; name it as 'package.module:factory'"
        )
    if sweep.folder is not None and str(sweep.folder) not in sys.path:
        sys.path.append(str(sweep.folder))
    export_dir = store / ".export"
    try:
        resolved = resolve_model(
            sweep.resolve(spec.model) or spec.model,
            weights=sweep.resolve(spec.weights),
            input_shape=spec.input_shape,
            workdir=export_dir,
            calib_shape=calib_shape,
        )
        if not resolved.onnx_path.is_file():
            raise SweepError(f"models: {resolved.onnx_path}: not a file")
        blob = store_file(resolved.onnx_path, store, ".onnx")
    except (UsageError, ModelLoadError) as exc:
        raise SweepError(f"models: {exc}") from exc
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)
    return PreparedModel(spec, blob, resolved.module)


def point_key(model: Blob, inputs: PreparedInputs, recipe_settings: dict, finetune: dict | None) -> str:
    """The content hash that names a point: model bytes, data bytes, every setting, the fine-tuning."""
    identity = {
        "model": model.sha256,
        "data": inputs.data_hashes(),
        "recipe": recipe_settings,
        "finetune": None if finetune is None else {**finetune, "source": inputs.finetune_sha256},
    }
    return sha256_bytes(json.dumps(identity, sort_keys=True).encode())[:16]
