"""What the steps after prune need of the original model, read from its ModelProto in one pass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from deploysparse.denormals import DenormalCount, count_denormals, flushed_copy
from deploysparse.modelio import load_model, save_model
from deploysparse.recipe import RECIPE_SHAPE
from deploysparse.run_shapes import RunShapes, resolve_shapes


@dataclass(frozen=True)
class OriginalFacts:
    """What the steps after prune need of the original model, read from the ModelProto in one pass.

    A step given these neither loads the original again (0.4 s for a 100 MB model, seconds at 2 GB)
    nor needs the caller to hold the ModelProto through build and benchmark (its size in memory).
    A step not given them reads them from the file itself."""

    shapes: RunShapes  # the shapes the run feeds it at (TensorRT profiles, benchmarks, the report)
    denormals: DenormalCount  # denormal float32 weights, for the report
    flushed: Path | None  # the original with those set to zero, on disk; None when it has none

    @classmethod
    def of(
        cls, model: onnx.ModelProto, folder: Path | None = None, shapes: RunShapes | None = None
    ) -> OriginalFacts:
        """The facts of `model`; the flushed copy is written into `folder` (None: not written).
        `shapes`: the run's (pipeline.steps.run_shapes); by default the model's static dims."""
        denormals = count_denormals(model)
        flushed = None
        if folder is not None and denormals.total:  # no copy of a model that has none
            flushed = _flushed_original(model, folder)
        return cls(shapes=shapes or resolve_shapes(model), denormals=denormals, flushed=flushed)

    @classmethod
    def read(
        cls, path: str, folder: Path | None = None, given: Mapping[str, Sequence[int]] | None = None
    ) -> OriginalFacts:
        """The facts of the model file at `path` (loaded here, released on return), its shapes from
        `given` (a recipe's input_shape) else its static dims."""
        model = load_model(path)
        return cls.of(model, folder, resolve_shapes(model, given, given_as=RECIPE_SHAPE))


def _flushed_original(original: onnx.ModelProto, folder: Path) -> Path:
    """A copy of the original with its denormal weights set to zero, written into `folder`.

    prune flushes the compact model, so timing the original as it is would credit pruning with
    what flushing did: the report gives the speed-up against this copy too.
    """
    flushed, _ = flushed_copy(original)
    return save_model(flushed, folder / "original.flushed.onnx")
