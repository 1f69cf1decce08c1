"""Load a PyTorch model from an entry point (`package.module:factory`) and a weights file.

deploysparse never unpickles code: the factory builds the architecture from the user's own source,
and the weights file is read with `torch.load(weights_only=True)` as a plain state dict. A checkpoint
that needs arbitrary unpickling is refused with a message, never loaded unsafely. Every failure is a
`DeploysparseError` with one line that names the spec, module, factory or file at fault.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from deploysparse.errors import ModelLoadError, UsageError

# Keys under which training scripts commonly nest the state dict inside a checkpoint dict.
_NESTED_STATE_KEYS = ("state_dict", "model", "model_state_dict")
_LISTED_KEYS = 5


def load_entry_point(spec: str, weights: str | Path | None = None) -> nn.Module:
    """Build the module that `spec` names, load `weights` into it strictly, and return it in eval mode."""
    factory = resolve_factory(spec)
    module = _call_factory(spec, factory)
    if weights is not None:
        load_weights(module, weights)
    return module.eval()


def resolve_factory(spec: str) -> object:
    """Import the module of `spec` (`module:attr` or `file.py:attr`) and return the named attribute."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise UsageError(
            f"model entry point {spec!r} must look like 'package.module:factory' (module, a colon, a callable)"
        )
    module = _import(module_name)
    target: object = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise UsageError(f"entry point {spec!r}: module {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, part)
    return target


def _import(module_name: str) -> object:
    if module_name.endswith(".py"):
        return _import_file(Path(module_name))
    # A console script does not put the working folder on sys.path; users expect `deploysparse prune
    # mymodels:net` to find ./mymodels.py just as `python -m` would.
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ModelLoadError(
                f"module {module_name!r} not found (not installed and not under the working folder {cwd})"
            ) from exc
        raise ModelLoadError(f"importing module {module_name!r} failed: {_one_line(exc)}") from exc
    except Exception as exc:
        raise ModelLoadError(f"importing module {module_name!r} failed: {_one_line(exc)}") from exc


def _import_file(path: Path) -> object:
    if not path.is_file():
        raise ModelLoadError(f"entry point file {path} not found")
    name = f"deploysparse_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"entry point file {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ModelLoadError(f"importing {path} failed: {_one_line(exc)}") from exc
    return module


def _call_factory(spec: str, factory: object) -> nn.Module:
    if isinstance(factory, nn.Module):
        return factory
    if not callable(factory):
        raise UsageError(
            f"entry point {spec!r} is a {type(factory).__name__}, not a callable that builds a model"
        )
    try:
        module = factory()
    except Exception as exc:
        raise ModelLoadError(f"factory {spec!r} raised {_one_line(exc)}") from exc
    if not isinstance(module, nn.Module):
        raise ModelLoadError(
            f"factory {spec!r} returned a {type(module).__name__}, expected a torch.nn.Module"
        )
    return module


def load_weights(module: nn.Module, weights: str | Path) -> None:
    """Load a plain state dict file into `module` with strict key and shape checks."""
    path = Path(weights)
    state = read_state_dict(path)
    state = _strip_wrapper_prefix(state, module)
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_first(unexpected)}")
        raise ModelLoadError(f"{path}: state dict does not fit the model: {'; '.join(parts)}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), _one_line(exc))
        raise ModelLoadError(f"{path}: state dict does not fit the model: {detail}") from exc


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict (or a checkpoint dict holding one) without executing any pickled code."""
    if not path.exists():
        raise ModelLoadError(f"weights file {path} not found")
    if path.is_dir():
        raise ModelLoadError(f"weights file {path} is a folder")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols before refusing the file; the refusal says it all.
            warnings.simplefilter("ignore")
            loaded = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        if "Weights only load failed" in str(exc):
            raise ModelLoadError(
                f"{path}: not a plain state dict; weights_only loading refused it ({_unpickler_reason(exc)}). "
                "Save the weights with torch.save(model.state_dict(), path)"
            ) from exc
        raise ModelLoadError(f"{path}: not a PyTorch weights file ({_one_line(exc)})") from exc
    state = _unwrap_checkpoint(loaded, path)
    bad = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise ModelLoadError(f"{path}: entries that are not tensors: {_first(sorted(map(str, bad)))}")
    return state


def _unwrap_checkpoint(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(loaded, Mapping):
        raise ModelLoadError(f"{path}: holds a {type(loaded).__name__}, expected a state dict")
    for key in _NESTED_STATE_KEYS:
        nested = loaded.get(key)
        if isinstance(nested, Mapping):
            return dict(nested)
    return dict(loaded)


def _strip_wrapper_prefix(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """Drop the 'module.' prefix that DataParallel/DDP checkpoints carry when the model has none."""
    prefix = "module."
    expected = module.state_dict()
    if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _unpickler_reason(exc: Exception) -> str:
    for line in str(exc).splitlines():
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1].strip()
            if reason:
                return reason.split(" was not an allowed global")[0]
    return "it contains pickled objects other than tensors"


def _first(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED_KEYS])
    more = len(names) - _LISTED_KEYS
    return shown + (f" (+{more} more)" if more > 0 else "")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
