"""Per-channel activation statistics from the PyTorch module, keyed by the exported ONNX tensor names.

Criteria (dead filters, PFP, similarity) score channels by what they output on calibration data. For
a model that came from an entry point the module itself can produce those values: forward hooks see
every Conv, BatchNorm and Linear output, and since the exporter kept parameter names, the ONNX node
that consumes initializer "layer1.0.bn1.weight" is the one that module became, so its output tensor
name is known.

Mapped here:
- the output of every Conv/ConvTranspose, BatchNorm/InstanceNorm and Linear module that runs exactly
  once per forward pass and whose weight feeds exactly one ONNX node whose rule says it is a whole
  layer's output (`Rule.layer_output`: Conv, ConvTranspose, BatchNormalization, Gemm, ...);
- every tensor the ONNX graph derives from mapped tensors of one module by an op whose rule says how
  to compute it (`Rule.compute`: activations such as Relu, Clip, HardSwish, Gelu, and the Mul of
  SiLU = x * Sigmoid(x)). They are computed from the hooked output with the ONNX op's own
  attributes, so functional activations (F.relu) are covered too.
Everything else (pooling outputs, residual sums, concatenations, modules called twice) is computed by
ONNX Runtime on the exported graph's intermediate values, when the caller asks for those tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from deploysparse.errors import CalibrationError
from deploysparse.graph.rules import attr, rule_for
from deploysparse.stats import session

_HOOKED_MODULES = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.Linear)


@dataclass
class ChannelStats:
    """Statistics of one tensor per channel (axis 1), over batch and spatial positions."""

    count: int  # values seen per channel
    mean: np.ndarray
    mean_abs: np.ndarray
    std: np.ndarray
    max: np.ndarray
    min: np.ndarray
    frac_positive: np.ndarray  # fraction of values > 0
    corr: np.ndarray | None = None  # (C, C) Pearson correlation, when asked for; 0 for a constant channel


class ChannelStatsAccumulator:
    """Streaming reductions in float64, so statistics over many batches equal those over one."""

    def __init__(self, correlation: bool = False) -> None:
        self.correlation = correlation
        self.count = 0
        self._sum: np.ndarray | None = None

    def add(self, values: np.ndarray) -> None:
        """Add a batch shaped (N, C, ...) ."""
        if values.ndim < 2:
            raise CalibrationError(f"statistics need a channel axis; got a tensor of shape {values.shape}")
        flat = np.moveaxis(values, 1, 0).reshape(values.shape[1], -1).astype(np.float64)
        if self._sum is None:
            channels = flat.shape[0]
            self._sum = np.zeros(channels)
            self._sum_abs = np.zeros(channels)
            self._sum_sq = np.zeros(channels)
            self._positive = np.zeros(channels)
            self._max = np.full(channels, -np.inf)
            self._min = np.full(channels, np.inf)
            self._outer = np.zeros((channels, channels)) if self.correlation else None
        self.count += flat.shape[1]
        self._sum += flat.sum(axis=1)
        self._sum_abs += np.abs(flat).sum(axis=1)
        self._sum_sq += np.square(flat).sum(axis=1)
        self._positive += (flat > 0).sum(axis=1)
        if flat.shape[1]:
            self._max = np.maximum(self._max, flat.max(axis=1))
            self._min = np.minimum(self._min, flat.min(axis=1))
        if self._outer is not None:
            self._outer += flat @ flat.T

    def result(self) -> ChannelStats:
        if self._sum is None or self.count == 0:
            raise CalibrationError("no calibration values were seen")
        n = self.count
        mean = self._sum / n
        var = self._sum_sq / n - mean**2
        # A constant channel (a dead filter) leaves only cancellation error here; call it exactly 0.
        var = np.where(var <= 1e-12 * mean**2, 0.0, np.maximum(var, 0.0))
        std = np.sqrt(var)
        corr = None
        if self._outer is not None:
            cov = self._outer / n - np.outer(mean, mean)
            denom = np.outer(std, std)
            with np.errstate(divide="ignore", invalid="ignore"):
                corr = np.where(denom > 0, cov / np.where(denom > 0, denom, 1.0), 0.0)
            np.fill_diagonal(corr, 1.0)
            corr = np.clip(corr, -1.0, 1.0)
        return ChannelStats(
            count=n,
            mean=mean,
            mean_abs=self._sum_abs / n,
            std=std,
            max=self._max.copy(),
            min=self._min.copy(),
            frac_positive=self._positive / n,
            corr=corr,
        )


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
        _run_hooks(module, inputs, derived, accumulators, batch_size)
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
        _run_hooks(module, inputs, derived, collectors, batch_size)
    values = {name: np.concatenate(c.parts) for name, c in collectors.items()}
    rest = [name for name in wanted if name not in values]
    if rest:
        from deploysparse.stats import intermediate_values

        feeds = dict(zip(_input_names(onnx_model), inputs, strict=True))
        values.update(intermediate_values(onnx_model, feeds, rest, batch_size))
    return values


def _input_names(model: onnx.ModelProto) -> list[str]:
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


@dataclass(frozen=True)
class _Derived:
    """An ONNX tensor as a function of one hooked module's output."""

    module: str
    fn: Callable[[torch.Tensor], torch.Tensor]


def map_tensors(module: nn.Module, onnx_model: onnx.ModelProto) -> dict[str, _Derived]:
    """Which ONNX tensors the module's hooks can produce, and how (module name + function of its output)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in onnx_model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = _constants(onnx_model)
    derived: dict[str, _Derived] = {}
    for name, sub in module.named_modules():
        if not isinstance(sub, _HOOKED_MODULES):
            continue
        key = f"{name}.weight" if getattr(sub, "weight", None) is not None else f"{name}.running_mean"
        nodes = [n for n in consumers.get(key, []) if _layer_output(n)]
        if len(nodes) == 1 and len(consumers.get(key, [])) == 1:
            derived[nodes[0].output[0]] = _Derived(name, _identity)
    frontier = list(derived)
    while frontier:
        tensor = frontier.pop()
        for node in consumers.get(tensor, []):
            if node.output[0] in derived:
                continue
            fn = _elementwise(node, derived, constants)
            if fn is not None:
                derived[node.output[0]] = fn
                frontier.append(node.output[0])
    return derived


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _layer_output(node: onnx.NodeProto) -> bool:
    rule = rule_for(node)
    return rule is not None and rule.layer_output


def _elementwise(
    node: onnx.NodeProto, derived: Mapping[str, _Derived], constants: Mapping[str, np.ndarray]
) -> _Derived | None:
    """The node's output as a function of one hooked output, when its rule can compute it from
    activations that all derive from that module's output."""
    rule = rule_for(node)
    if rule is None or rule.compute is None or not node.input:
        return None
    operands = [name for name in node.input if name and name not in constants]
    sources = [derived.get(name) for name in operands]
    if not sources or any(d is None for d in sources) or len({d.module for d in sources}) != 1:
        return None
    fn = rule.compute(node, constants)
    if fn is None:
        return None
    fns = [d.fn for d in sources]
    return _Derived(sources[0].module, lambda x, f=fn, gs=fns: f([g(x) for g in gs], F))


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Scalar initializers and the values of constant nodes (no input, a `value` tensor)."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if _small(t.dims)}
    for node in model.graph.node:
        value = attr(node, "value") if not node.input else None
        if isinstance(value, onnx.TensorProto):
            values[node.output[0]] = numpy_helper.to_array(value)
    return values


def _small(dims: Iterable[int]) -> bool:
    return int(np.prod(list(dims))) <= 1


def _run_hooks(
    module: nn.Module,
    inputs: list[np.ndarray],
    derived: Mapping[str, _Derived],
    accumulators: Mapping[str, ChannelStatsAccumulator | _Collector],
    batch_size: int,
) -> None:
    by_module: dict[str, list[str]] = {}
    for name in accumulators:
        by_module.setdefault(derived[name].module, []).append(name)
    submodules = dict(module.named_modules())
    calls: dict[str, int] = {}

    def hook_for(module_name: str) -> Callable:
        def hook(_mod: nn.Module, _inp: object, output: torch.Tensor) -> None:
            # Runs before any in-place activation downstream overwrites the output.
            calls[module_name] = calls.get(module_name, 0) + 1
            for tensor in by_module[module_name]:
                value = derived[tensor].fn(output.detach())
                accumulators[tensor].add(value.float().cpu().numpy())

        return hook

    handles = [submodules[name].register_forward_hook(hook_for(name)) for name in by_module]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            batches = 0
            for start in range(0, inputs[0].shape[0], batch_size):
                module(
                    *(torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])) for x in inputs)
                )
                batches += 1
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    twice = sorted(name for name, n in calls.items() if n != batches)
    if twice:
        raise CalibrationError(
            f"module {twice[0]} ran {calls[twice[0]]} times in {batches} forward passes; its ONNX tensor is ambiguous"
        )


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
    sess = session(model, names)
    feed_names = [i.name for i in sess.get_inputs()]
    accumulators = {name: ChannelStatsAccumulator(correlation) for name in names}
    for start in range(0, inputs[0].shape[0], batch_size):
        feeds = {n: x[start : start + batch_size] for n, x in zip(feed_names, inputs, strict=True)}
        for name, value in zip(names, sess.run(names, feeds), strict=True):
            accumulators[name].add(value)
    return {name: acc.result() for name, acc in accumulators.items()}
