"""Which ONNX tensors a PyTorch module's forward hooks can produce, and running those hooks.

Since the exporter kept parameter names, the ONNX node that consumes initializer
"layer1.0.bn1.weight" is the one that module became, so a hook on the module sees that node's output
tensor. The op rules say which nodes are a whole layer's output (`Rule.layer_output`) and how to
compute the element-wise ops that follow from it (`Rule.compute`: activations, SiLU's Mul), so
functional activations (F.relu) are covered too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from deploysparse.errors import CalibrationError
from deploysparse.graph.rules import attr, readers, rule_for

_HOOKED_MODULES = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.Linear)


class Accumulator(Protocol):
    """What a hook feeds: one batch of one tensor at a time."""

    def add(self, values: np.ndarray) -> None: ...


@dataclass(frozen=True)
class Derived:
    """An ONNX tensor as a function of one hooked module's output."""

    module: str
    fn: Callable[[torch.Tensor], torch.Tensor]


def map_tensors(module: nn.Module, onnx_model: onnx.ModelProto) -> dict[str, Derived]:
    """Which ONNX tensors the module's hooks can produce, and how (module name + function of its output)."""
    consumers = readers(onnx_model.graph.node)
    constants = _constants(onnx_model)
    derived: dict[str, Derived] = {}
    for name, sub in module.named_modules():
        if not isinstance(sub, _HOOKED_MODULES):
            continue
        key = f"{name}.weight" if getattr(sub, "weight", None) is not None else f"{name}.running_mean"
        nodes = [n for n in consumers.get(key, []) if _layer_output(n)]
        if len(nodes) == 1 and len(consumers.get(key, [])) == 1:
            derived[nodes[0].output[0]] = Derived(name, _identity)
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
    node: onnx.NodeProto, derived: Mapping[str, Derived], constants: Mapping[str, np.ndarray]
) -> Derived | None:
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
    return Derived(sources[0].module, lambda x, f=fn, gs=fns: f([g(x) for g in gs], F))


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


def run_hooks(
    module: nn.Module,
    inputs: list[np.ndarray],
    derived: Mapping[str, Derived],
    accumulators: Mapping[str, Accumulator],
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
