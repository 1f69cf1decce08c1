"""Shared fixtures: torch exports of the test architectures, made once per session.

An export takes 0.2-3 s, and the same (architecture, exporter, BN kept?) file serves several test
modules; the cache lives in a session temp folder, so tests never write next to the sources. Tests
must not modify a cached file (they hash it before and after to prove the tools don't either).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Callable[..., Path]:
    """`exported(arch, exporter="dynamo", keep_bn=False, opset=None)`: the path of that architecture's
    (ARCHS or TOKEN_ARCHS) ONNX export with dead channels planted (30% of every BN layer; the token
    nets have none), exported at batch 2 with a dynamic batch (opset None: the exporter's default).

    Under pytest-xdist the cache lives in the folder all workers share, each file made once under a
    file lock: the second worker that asks waits for the first one's export instead of repeating it.
    """
    from filelock import FileLock

    from tests.archs import ARCHS, TOKEN_ARCHS
    from tests.exporting import export

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if worker_id != "master" else base) / "exports"
    root.mkdir(exist_ok=True)

    def get(arch: str, exporter: str = "dynamo", keep_bn: bool = False, opset: int | None = None) -> Path:
        folder = root / f"{arch}-{exporter}{'-bn' if keep_bn else ''}-{opset or 'default'}"
        path = folder / "model.onnx"
        done = folder / "complete"
        with FileLock(str(folder) + ".lock"):
            if not done.exists():
                spec = ARCHS.get(arch) or TOKEN_ARCHS[arch]
                export(
                    spec.planted(),
                    spec.example(2),
                    path,
                    exporter,
                    keep_bn,
                    outputs=spec.outputs,
                    opset=opset,
                )
                done.touch()
        return path

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


@pytest.fixture
def model_loads(monkeypatch: pytest.MonkeyPatch) -> Counter[Path]:
    """Counts `modelio.load_model` calls per resolved path, from here to the end of the test: the
    function is replaced in every deploysparse module that imported it by name, and in modelio
    itself for lazy imports."""
    from deploysparse import modelio

    real = modelio.load_model
    loads: Counter[Path] = Counter()

    def counting(path):
        loads[Path(path).resolve()] += 1
        return real(path)

    for module in list(sys.modules.values()):
        if (
            getattr(module, "__name__", "").startswith("deploysparse")
            and getattr(module, "load_model", None) is real
        ):
            monkeypatch.setattr(module, "load_model", counting)
    return loads


@pytest.fixture(scope="module")
def one_ray_at_a_time(tmp_path_factory: pytest.TempPathFactory, worker_id: str):
    """Held for the whole module by every test module that starts Ray: the pytest-xdist workers
    share the lock file, so two of this suite's Rays never run at once (`--ray auto` joins any Ray
    process it finds on the machine). `make test`'s `--dist loadgroup` would put these modules in
    one worker by their `xdist_group("ray")` mark, but pytest 9.2 with pytest-xdist 3.8 ignores the
    mark (pytest-xdist issue 1386); the lock holds either way."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if worker_id != "master" else base
    with FileLock(str(root / "ray.lock")):
        yield


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundled digits model (the zoo's trained CNN) exported to ONNX once per session, with 64
    calibration images and the validation split (images, labels) as .npy files."""
    import numpy as np

    from deploysparse.frontend.model_source import resolve_model
    from deploysparse.zoo.digits import calibration_set, validation_set

    folder = tmp_path_factory.mktemp("digits")
    resolved = resolve_model(
        "deploysparse.zoo.digits:digits_model", input_shape=[1, 1, 16, 16], workdir=folder / "export"
    )
    images, labels = validation_set()
    files = {
        "model": Path(resolved.onnx_path),
        **{k: folder / f"{k}.npy" for k in ("calib", "val", "labels")},
    }
    np.save(files["calib"], calibration_set(64))
    np.save(files["val"], images)
    np.save(files["labels"], labels)
    return files
