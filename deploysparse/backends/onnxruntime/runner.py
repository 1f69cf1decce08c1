"""OrtRunner: one InferenceSession on a model file, run as deployed (full graph optimisation)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from deploysparse.backends.base import Runner
from deploysparse.backends.machine import usable_cores
from deploysparse.backends.onnxruntime.runtime import load_onnxruntime, session_input_specs, session_options
from deploysparse.errors import BackendError, first_line


class OrtRunner(Runner):
    """An InferenceSession with full graph optimisation and an explicit thread count (see
    `session_options` for `spinning`)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: list[str],
        threads: int | None = None,
        *,
        spinning: bool = True,
    ) -> None:
        ort = load_onnxruntime()
        path = Path(path)
        if not path.exists():
            raise BackendError(f"{path}: no such model file")
        self.threads = threads or usable_cores()
        options = session_options(ort, self.threads, spinning=spinning)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise BackendError(f"{path}: ONNX Runtime cannot load the model ({first_line(exc)})") from exc
        self.path = path
        self.providers = self.session.get_providers()
        self.input_specs = session_input_specs(self.session)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(None, dict(feeds))
        except Exception as exc:
            raise BackendError(f"{self.path}: inference failed ({first_line(exc)})") from exc
        return dict(zip(self.output_names, outputs, strict=True))
