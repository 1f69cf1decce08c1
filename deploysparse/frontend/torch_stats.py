"""Per-channel activation statistics and values from the PyTorch module, keyed by ONNX tensor names.

Criteria (dead filters, PFP, similarity) score channels by what they output on calibration data. For
a model that came from an entry point the module itself produces most of those values: the tensors
its forward hooks reach (torch_hooks.py: every Conv, BatchNorm and Linear output and the activations
that follow) are reduced here (channel_stats.py) or collected as arrays. Everything else (pooling
outputs, residual sums, concatenations, modules called twice) is computed by ONNX Runtime on the
exported graph's intermediate values, when the caller asks for those tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from torch import nn

from deploysparse.backends import reference_backend
from deploysparse.channel_stats import ChannelStats, ChannelStatsAccumulator
from deploysparse.errors import CalibrationError
from deploysparse.frontend.torch_hooks import map_tensors, run_hooks

__all__ = ["collect_torch_stats", "collect_torch_values"]


def collect_torch_stats(
    module: nn.Module,
    calib: np.ndarray | Mapping[str, np.ndarray],
    onnx_model: onnx.ModelProto,
    *,
    tensors: Iterable[str] | None = None,
    correlation: bool = False,
    batch_size: int = 32,
) -> dict[str, ChannelStats]:
    """Statistics per ONNX tensor name, computed by running `module` on `calib`.

    tensors=None returns every tensor the module can be mapped to; a list returns exactly those,
    computing the ones hooks cannot reach with ONNX Runtime on `onnx_model` over the same data.
    """
    inputs = _calibration_inputs(calib, onnx_model)
    derived = map_tensors(module, onnx_model)
    wanted = set(derived) if tensors is None else set(tensors)
    accumulators = {name: ChannelStatsAccumulator(correlation) for name in wanted if name in derived}
    if accumulators:
        run_hooks(module, inputs, derived, accumulators, batch_size)
    stats = {name: acc.result() for name, acc in accumulators.items()}
    rest = sorted(wanted - set(stats))
    if rest:
        stats.update(_onnxruntime_stats(onnx_model, inputs, rest, correlation, batch_size))
    return stats


class _Collector:
    """Keeps every batch of one tensor (for criteria that need the values, not only statistics)."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def add(self, values: np.ndarray) -> None:
        self.parts.append(values)


def collect_torch_values(
    module: nn.Module,
    calib: np.ndarray | Mapping[str, np.ndarray],
    onnx_model: onnx.ModelProto,
    tensors: Iterable[str],
    *,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """The named ONNX tensors' values on `calib`, from forward hooks on `module` where the mapping
    reaches them and from ONNX Runtime on `onnx_model` for the rest (pooling outputs, sums)."""
    inputs = _calibration_inputs(calib, onnx_model)
    derived = map_tensors(module, onnx_model)
    wanted = list(dict.fromkeys(tensors))
    collectors = {name: _Collector() for name in wanted if name in derived}
    if collectors:
        run_hooks(module, inputs, derived, collectors, batch_size)
    values = {name: np.concatenate(c.parts) for name, c in collectors.items()}
    rest = [name for name in wanted if name not in values]
    if rest:
        feeds = dict(zip(_input_names(onnx_model), inputs, strict=True))
        values.update(reference_backend().intermediates(onnx_model, feeds, rest, batch_size))
    return values


def _input_names(model: onnx.ModelProto) -> list[str]:
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def _calibration_inputs(
    calib: np.ndarray | Mapping[str, np.ndarray], model: onnx.ModelProto
) -> list[np.ndarray]:
    names = _input_names(model)
    if isinstance(calib, Mapping):
        missing = [n for n in names if n not in calib]
        if missing:
            raise CalibrationError(f"calibration data has no array for model input {missing[0]!r}")
        arrays = [np.asarray(calib[n], dtype=np.float32) for n in names]
    else:
        if len(names) != 1:
            raise CalibrationError(
                f"the model has {len(names)} inputs; pass calibration data as a dict by input name"
            )
        arrays = [np.asarray(calib, dtype=np.float32)]
    if not arrays[0].shape or arrays[0].shape[0] == 0:
        raise CalibrationError("calibration data is empty")
    return arrays


def _onnxruntime_stats(
    model: onnx.ModelProto, inputs: list[np.ndarray], names: list[str], correlation: bool, batch_size: int
) -> dict[str, ChannelStats]:
    """The fallback: ONNX Runtime computes the tensors, reduced batch by batch to bound memory."""
    produced = {o for n in model.graph.node for o in n.output}
    unknown = [n for n in names if n not in produced]
    if unknown:
        raise CalibrationError(f"tensor {unknown[0]!r} is not produced by any node of the ONNX graph")
    feeds = dict(zip(_input_names(model), inputs, strict=True))
    accumulators = {name: ChannelStatsAccumulator(correlation) for name in names}
    for values in reference_backend().intermediate_batches(model, feeds, names, batch_size):
        for name, value in values.items():
            accumulators[name].add(value)
    return {name: acc.result() for name, acc in accumulators.items()}
