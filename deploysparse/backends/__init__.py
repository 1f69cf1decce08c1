"""Backends: the runtimes a compact model is built for and run on, behind one interface (base.Backend).

This package is the only code that opens a runtime session: random inputs (`feeds`), timing
(`timing`), intermediate tensors, per-layer profiles and session options all live here, and the rest
of deploysparse reaches a runtime through `get_backend(name)` (tests/test_import_layers.py fails on
an `onnxruntime` or `tensorrt` import anywhere else).

Backend names are declared once, in this registry; every list of them (the CLI's --backend choices,
recipe and sweep validation, error texts) is read from it. A backend outside the package registers
itself the same way as the built-in ones:

    from deploysparse.backends import register_backend
    register_backend("mybackend", MyBackend)                 # a Backend subclass or factory
    register_backend("other", "my_package.other:OtherBackend")  # imported on first use

Each backend is imported only when asked for, so `deploysparse` works without TensorRT installed and
does not pay ONNX Runtime's import time for commands that never run a model. The registry itself
imports nothing heavy (the interface in `base` is loaded on first use), so the CLI builds its
--backend choices from it without loading onnx.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deploysparse.errors import UsageError

if TYPE_CHECKING:
    from deploysparse.backends.base import Backend

BackendFactory = Callable[..., "Backend"]
_FROM_BASE = ("Backend", "BuildResult", "Runner", "parse_shapes")  # loaded with base on first use

# The backend that runs an ONNX model as it is: the reference `validate` compares with, and where
# the analysis, the dead-filter check and the criteria read intermediate tensors.
REFERENCE_BACKEND = "onnxruntime"
DEFAULT_BACKEND = "onnxruntime"  # what --backend means when not given

_REGISTRY: dict[str, BackendFactory | str] = {}


def register_backend(name: str, factory: BackendFactory | str, *, replace: bool = False) -> None:
    """Make `name` a backend: `factory(**options)` returns a Backend (a Backend subclass is one), or
    is "package.module:Attribute", imported the first time the backend is asked for.

    A name already registered is an error unless `replace=True`, so two plugins cannot silently
    take each other's place."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a backend name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"backend {name!r} is already registered; pass replace=True to override it")
    if isinstance(factory, str) and ":" not in factory:
        raise ValueError(f"backend {name!r}: expected 'package.module:Attribute', got {factory!r}")
    _REGISTRY[name] = factory


def unregister_backend(name: str) -> None:
    """Forget the backend `name` (KeyError when it is not registered)."""
    del _REGISTRY[name]


def backend_names() -> tuple[str, ...]:
    """The registered backends, in registration order."""
    return tuple(_REGISTRY)


def check_backend_name(name: str, option: str = "--backend") -> str:
    """`name` if it is a registered backend; UsageError naming the choices otherwise."""
    if name not in _REGISTRY:
        raise UsageError(f"{option}: unknown backend {name!r}; choose one of {', '.join(_REGISTRY)}")
    return name


def get_backend(name: str, **options: object) -> Backend:
    """The backend called `name`, made with `options` (e.g. providers=[...] for onnxruntime)."""
    factory = _REGISTRY[check_backend_name(name)]
    if isinstance(factory, str):
        module_name, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
    return factory(**options)


def reference_backend() -> Backend:
    """The backend that runs an ONNX model as it is (REFERENCE_BACKEND)."""
    return get_backend(REFERENCE_BACKEND)


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        from deploysparse.backends import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_backend("onnxruntime", "deploysparse.backends.onnxruntime:OnnxRuntimeBackend")
register_backend("tensorrt", "deploysparse.backends.tensorrt:TensorRTBackend")

__all__ = [
    "DEFAULT_BACKEND",
    "REFERENCE_BACKEND",
    "Backend",
    "BuildResult",
    "Runner",
    "backend_names",
    "check_backend_name",
    "get_backend",
    "parse_shapes",
    "reference_backend",
    "register_backend",
    "unregister_backend",
]
