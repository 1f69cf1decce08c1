"""Shared fixtures: torch exports of the test architectures, made once per session.

An export takes 0.2-3 s, and the same (architecture, exporter, BN kept?) file serves several test
modules; the cache lives in a session temp folder, so tests never write next to the sources. Tests
must not modify a cached file (they hash it before and after to prove the tools don't either).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`exported(arch, exporter="dynamo", keep_bn=False, opset=None)`: the path of that architecture's
    ONNX export with dead channels planted (30% of every BN layer), exported at batch 2 with a dynamic
    batch (opset None: the exporter's default)."""
    from tests.archs import ARCHS
    from tests.exporting import export

    root = tmp_path_factory.mktemp("exports")
    cache: dict[tuple[str, str, bool, int | None], Path] = {}

    def get(arch: str, exporter: str = "dynamo", keep_bn: bool = False, opset: int | None = None) -> Path:
        key = (arch, exporter, keep_bn, opset)
        if key not in cache:
            spec = ARCHS[arch]
            path = root / f"{arch}-{exporter}{'-bn' if keep_bn else ''}-{opset or 'default'}" / "model.onnx"
            export(
                spec.planted(), spec.example(2), path, exporter, keep_bn, outputs=spec.outputs, opset=opset
            )
            cache[key] = path
        return cache[key]

    return get


@dataclass
class CliResult:
    """Exit code and captured output of one in-process `deploysparse` invocation."""

    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """`cli("prune", MODEL, ...)` runs the CLI in-process (no torch import per call) and returns
    its exit code with stdout and stderr."""
    from deploysparse.cli import main

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke
