"""Carry a pruning plan back to the PyTorch module, for fine-tuning the compact network.

Surgery edits the ONNX graph; its `SurgeryResult` records, in the original initializer names (which
the front end kept equal to parameter names), which indices every tensor kept along which axis and
which tensors got new values (merged or re-weighted consumers, folded biases). Replaying that record
on a deep copy of the module gives a compact module that computes what the compact ONNX computes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from deploysparse.errors import PlanError, UsageError
from deploysparse.graph.rules import attr, rule_for


class SurgeryRecord(Protocol):
    """What `apply_plan` reads from `deploysparse.graph.surgery.SurgeryResult`."""

    slices: Mapping[str, Mapping[int, np.ndarray]]
    biases: Mapping[str, np.ndarray]
    values: Mapping[str, np.ndarray]


def apply_plan(module: nn.Module, surgery: SurgeryRecord, verify: bool = True) -> nn.Module:
    """Return a compact deep copy of `module` with the channels surgery removed; `module` is untouched.

    `surgery` is a SurgeryResult, or the PruneResult `deploysparse.api.prune` returns (its
    `.surgery`). Raises PlanError when the record names a tensor of a submodule that does not exist,
    or a slice or value does not fit the tensor. With `verify`, the compact module is run once on a
    random input and compared with the compact ONNX model: a forward that hard-codes a channel
    count (`x.chunk(2, 1)` after an uneven prune, `view(-1, 512)`) fails here with a PlanError
    instead of later in training.
    """
    surgery = getattr(surgery, "surgery", surgery)
    compact = copy.deepcopy(module)
    tensors = _named_tensors(compact)
    aliases = _aliases_of_graph_constants(surgery, tensors)
    groups_before = {
        name: m.groups for name, m in compact.named_modules() if isinstance(m, nn.modules.conv._ConvNd)
    }
    sliced: dict[str, Mapping[int, np.ndarray]] = {}  # module tensor -> its kept positions per axis
    for name, axes in surgery.slices.items():
        if name in aliases:
            name, axes = aliases[name].tensor, {aliases[name].axis(a): kept for a, kept in axes.items()}
        if _skip_graph_constant(name, tensors, compact):
            continue
        tensor = tensors[name]
        for axis, kept in sorted(axes.items()):
            index = torch.as_tensor(np.asarray(kept, dtype=np.int64))
            if tensor.dim() <= axis or (index.numel() and int(index.max()) >= tensor.shape[axis]):
                raise PlanError(
                    f"slice of {name} along axis {axis} does not fit its shape {tuple(tensor.shape)}"
                )
            tensor = tensor.index_select(axis, index)
        _replace(compact, name, tensor)
        tensors[name] = tensor
        sliced[name] = axes
    _slice_dropped_zero_biases(compact, sliced)
    for name, value in surgery.values.items():
        if name in aliases:
            name, value = aliases[name].tensor, aliases[name].layout(np.asarray(value))
        if _skip_graph_constant(name, tensors, compact):
            continue
        old = tensors[name]
        new = torch.as_tensor(np.asarray(value)).to(old.dtype)
        if new.dim() != old.dim() or (name in sliced and new.shape != old.shape):
            raise PlanError(
                f"new value of {name} has shape {tuple(new.shape)}, the module has {tuple(old.shape)}"
            )
        _replace(compact, name, new)
        tensors[name] = new
    for weight_name, bias in surgery.biases.items():
        _set_bias(compact, weight_name, bias)
    _fix_module_attributes(compact, groups_before, getattr(surgery, "model", None))
    if verify and getattr(surgery, "model", None) is not None:
        _verify_against_graph(compact, surgery.model)
    return compact


@dataclass(frozen=True)
class _Alias:
    """A graph constant that holds a module tensor in another layout: a 1-D parameter reshaped (a
    PReLU slope or a channels-first LayerNorm's weight as (C, 1, 1)), or a Linear's weight transposed
    (the (in, out) matrix of a MatMul on an N-D input)."""

    tensor: str
    transposed: bool

    def axis(self, graph_axis: int) -> int:
        """The axis of the module tensor that the constant's `graph_axis` is."""
        return 1 - graph_axis if self.transposed else 0

    def layout(self, value: np.ndarray) -> np.ndarray:
        """The constant's value in the module tensor's layout."""
        return value.T if self.transposed else value.reshape(-1)


def _aliases_of_graph_constants(
    surgery: SurgeryRecord, tensors: Mapping[str, torch.Tensor]
) -> dict[str, _Alias]:
    """Exporters fold some parameters into renamed constants (a PReLU slope reshaped to (C, 1, 1)
    becomes `val_16`; a Linear on an N-D input becomes a MatMul by its transposed weight). A constant
    the surgery changed whose original values equal exactly one module tensor, reshaped or
    transposed, is that tensor: changing it keeps the module in step with the graph."""
    original = getattr(surgery, "original", None)
    if original is None:
        return {}
    stored = {init.name: init for init in original.graph.initializer}
    aliases = {}
    for name in {*surgery.slices, *surgery.values}:
        if name in tensors or name not in stored:
            continue
        value = numpy_helper.to_array(stored[name])
        matches = [alias for tname, t in tensors.items() if (alias := _alias(value, tname, t)) is not None]
        if len(matches) == 1:
            aliases[name] = matches[0]
    return aliases


def _alias(value: np.ndarray, name: str, tensor: torch.Tensor) -> _Alias | None:
    """Module tensor `name` as what a constant holding `value` stands for, None when they differ."""
    if tensor.dim() == 1 and value.size == tensor.shape[0] and max(value.shape, default=1) == value.size:
        same = np.array_equal(value.reshape(-1), tensor.detach().cpu().numpy())
        return _Alias(name, transposed=False) if same else None
    if tensor.dim() == 2 and value.shape == tuple(tensor.shape)[::-1]:
        same = np.array_equal(value, tensor.detach().cpu().numpy().T)
        return _Alias(name, transposed=True) if same else None
    return None


def _verify_against_graph(module: nn.Module, model: onnx.ModelProto) -> None:
    """Run the compact module and the compact ONNX model on one random input; they must agree."""
    from deploysparse.backends import reference_backend
    from deploysparse.backends.feeds import make_feeds
    from deploysparse.calibration import model_input_specs

    specs = model_input_specs(model)
    try:
        feeds = make_feeds(specs, min_batch=2)
    except UsageError:
        return  # dynamic spatial dims: no shape to try; the caller's data will tell
    expected = list(reference_backend().intermediates(model, feeds).values())
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            got = module(*(torch.from_numpy(feeds[spec.name]) for spec in specs))
    except Exception as exc:  # the module's own forward failed: name it
        raise PlanError(
            f"the compact module does not run ({type(exc).__name__}: {exc}); its forward probably "
            "hard-codes a channel count (x.chunk, view with a literal size): edit it or prune that "
            "group with --protect"
        ) from exc
    finally:
        module.train(was_training)
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    for i, (want, have) in enumerate(zip(expected, got, strict=False)):
        have = have.detach().cpu().numpy()
        scale = max(float(np.abs(want).max()), 1e-12)
        if have.shape != want.shape or float(np.abs(have - want).max()) / scale > 1e-4:
            raise PlanError(
                f"output {i} of the compact module differs from the compact ONNX model's; its forward "
                "probably depends on a channel count the plan changed"
            )


def _named_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    named = {name: p.data for name, p in module.named_parameters(remove_duplicate=False)}
    named.update(dict(module.named_buffers(remove_duplicate=False)))
    return named


def _skip_graph_constant(name: str, tensors: Mapping[str, torch.Tensor], module: nn.Module) -> bool:
    """Exporter-made constants (reshape targets, clip bounds) have no module tensor: torch derives them.

    A name that points into an existing submodule but matches none of its tensors is a mismatch
    between plan and module, not a graph constant.
    """
    if name in tensors:
        return False
    owner, _, _ = name.rpartition(".")
    submodules = dict(module.named_modules())
    if owner and owner in submodules:
        raise PlanError(f"the surgery record names {name}, which module {owner!r} does not have")
    return True


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    value = value.detach().clone().contiguous()
    if attr in owner._parameters and owner._parameters[attr] is not None:
        owner._parameters[attr] = nn.Parameter(value, requires_grad=owner._parameters[attr].requires_grad)
    else:
        owner._buffers[attr] = value


def _slice_dropped_zero_biases(module: nn.Module, sliced: Mapping[str, Mapping[int, np.ndarray]]) -> None:
    """Exporters leave an all-zero bias out of the graph (it adds nothing), so the surgery never
    slices it: it follows the kept rows of its conv's or Linear's weight."""
    for weight_name, axes in sliced.items():
        owner_name, _, attr = weight_name.rpartition(".")
        if attr != "weight" or 0 not in axes or f"{owner_name}.bias" in sliced:
            continue
        owner = module.get_submodule(owner_name)
        bias = getattr(owner, "bias", None)
        plain = isinstance(owner, nn.Linear) or (
            isinstance(owner, nn.modules.conv._ConvNd)
            and not isinstance(owner, nn.modules.conv._ConvTransposeNd)
        )
        if plain and isinstance(bias, torch.Tensor) and not torch.count_nonzero(bias):
            index = torch.as_tensor(np.asarray(axes[0], dtype=np.int64))
            _replace(module, f"{owner_name}.bias", bias.detach().index_select(0, index))


def _set_bias(module: nn.Module, weight_name: str, bias: np.ndarray) -> None:
    owner_name, _, attr = weight_name.rpartition(".")
    if attr != "weight":
        raise PlanError(f"a new bias is keyed by {weight_name}, which is not a module's weight")
    try:
        owner = module.get_submodule(owner_name)
    except AttributeError:
        raise PlanError(
            f"a new bias belongs to {weight_name}, but the module has no {owner_name!r}"
        ) from None
    weight = owner.weight
    value = torch.as_tensor(np.asarray(bias)).to(weight.dtype)
    out_channels = (
        weight.shape[1] * owner.groups
        if isinstance(owner, nn.modules.conv._ConvTransposeNd)
        else weight.shape[0]
    )
    if value.shape != (out_channels,):
        raise PlanError(
            f"new bias for {weight_name} has shape {tuple(value.shape)}, expected ({out_channels},)"
        )
    owner.bias = nn.Parameter(value.clone(), requires_grad=weight.requires_grad)


def _fix_module_attributes(
    module: nn.Module, groups_before: Mapping[str, int], compact_graph: onnx.ModelProto | None
) -> None:
    """Make the attributes that describe shapes agree with the sliced tensors (repr, re-export, checks)."""
    graph_groups = _conv_groups_in_graph(compact_graph)
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.conv._ConvNd):
            _fix_conv(sub, groups_before[name], graph_groups.get(f"{name}.weight"))
        elif isinstance(sub, nn.modules.batchnorm._NormBase):
            reference = sub.weight if sub.weight is not None else sub.running_mean
            if reference is not None:
                sub.num_features = reference.shape[0]
        elif isinstance(sub, nn.Linear):
            sub.out_features, sub.in_features = sub.weight.shape
        elif isinstance(sub, nn.LayerNorm) and sub.weight is not None:
            sub.normalized_shape = tuple(sub.weight.shape)
        elif isinstance(sub, nn.PReLU):
            sub.num_parameters = sub.weight.numel()


def _fix_conv(conv: nn.modules.conv._ConvNd, groups_before: int, graph_group: int | None) -> None:
    weight = conv.weight
    transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
    if graph_group is not None:
        groups = graph_group
    elif groups_before > 1 and weight.shape[1] == 1 and not transposed:
        groups = weight.shape[0] // (conv.out_channels // groups_before)
    else:
        groups = groups_before
    conv.groups = groups
    if transposed:
        conv.in_channels, conv.out_channels = weight.shape[0], weight.shape[1] * groups
    else:
        conv.out_channels, conv.in_channels = weight.shape[0], weight.shape[1] * groups


def _conv_groups_in_graph(model: onnx.ModelProto | None) -> dict[str, int]:
    """`group` of every Conv in the compact graph, by weight name: the authority for grouped convs."""
    if model is None:
        return {}
    groups = {}
    for node in model.graph.node:
        rule = rule_for(node)
        if rule is not None and rule.layer_output and len(node.input) > 1:
            groups[node.input[1]] = int(attr(node, "group", 1))
    return groups
